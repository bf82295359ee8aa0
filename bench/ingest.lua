-- wrk script for bench/ingest.py: every request is a batch of BATCH unique events from one
-- device, rotating over the registered devices (token file: one "device_id token" per line).
-- Event ids are unique per (wrk thread, counter), so the dedupe index does real work.
local tokens_file = os.getenv("VW_TOKENS")
local batch = tonumber(os.getenv("VW_BATCH") or "100")
local devices, tokens = {}, {}
for line in io.lines(tokens_file) do
  local d, t = line:match("^(%S+)%s+(%S+)$")
  if d then devices[#devices + 1] = d; tokens[#tokens + 1] = t end
end

local thread_id = 0
local counter = 0
local run = os.getenv("VW_RUN") or "r"
local now = os.date("!%Y-%m-%dT%H:%M:%SZ")

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  tid = tid or 0
end

function request()
  counter = counter + 1
  local i = (counter * 7919 + tid * 104729) % #devices + 1
  local dev = devices[i]
  local parts = {}
  for k = 1, batch do
    parts[k] = string.format(
      '{"event_id":"%s-%d-%d-%d","device_id":"%s","type":"telemetry","occurred_at":"%s","seq":%d,' ..
      '"data":{"cabinet_temp_c":4.2,"refrigeration_temp_c":-1.5,"door_open":false,"motor_status":"idle","voltage_v":229.5}}',
      run, tid, counter, k, dev, now, counter * batch + k)
  end
  local body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/events", {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, body)
end
