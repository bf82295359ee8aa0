-- wrk script for bench/pipeline.py: every request is a batch of BATCH events from one device,
-- a fixed-seed mix of the types a fleet sends (telemetry, heartbeats, sales, inventory,
-- connectivity, faults), rotating over the registered devices (token file: one
-- "device_id token" per line). Event ids are unique per (run, wrk thread, counter, index).
local tokens_file = os.getenv("VW_TOKENS")
local batch = tonumber(os.getenv("VW_BATCH") or "100")
local seed = tonumber(os.getenv("VW_SEED") or "42")
local run = os.getenv("VW_RUN") or "r"
local devices, tokens = {}, {}
for line in io.lines(tokens_file) do
  local d, t = line:match("^(%S+)%s+(%S+)$")
  if d then devices[#devices + 1] = d; tokens[#tokens + 1] = t end
end

local thread_id = 0
local counter = 0
local now = os.date("!%Y-%m-%dT%H:%M:%SZ")

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  tid = tid or 0
  math.randomseed(seed + tid)
end

local function telemetry()
  -- mostly normal readings; about 1 in 50 a hot cabinet or a low voltage (sustained rules see them)
  local hot = math.random(50) == 1
  return "telemetry", string.format(
    '{"cabinet_temp_c":%.1f,"refrigeration_temp_c":%.1f,"door_open":%s,"motor_status":"idle","voltage_v":%.1f,"cpu_pct":%d}',
    hot and 48.5 or 3 + math.random() * 2, -1 - math.random(), math.random(20) == 1 and "true" or "false",
    math.random(60) == 1 and 199.0 or 228 + math.random() * 4, math.random(5, 60))
end

local function heartbeat()
  return "heartbeat", string.format('{"uptime_s":%d,"firmware_version":"4.2.%d","interval_s":60}',
    math.random(1, 10000000), math.random(0, 3))
end

local methods = {"cash", "card", "qr", "mobile"}
local function sale(k)
  local ok = math.random(25) ~= 1
  return "transaction", string.format(
    '{"transaction_id":"t-%s-%d-%d-%d","product_id":"p-%d","slot":"A%d","price_minor":%d,"currency":"EUR",' ..
    '"payment_method":"%s","payment_status":"success","vend_status":"%s"%s}',
    run, tid, counter, k, math.random(1, 40), math.random(1, 12), math.random(100, 400),
    methods[math.random(#methods)], ok and "success" or "failure", ok and "" or ',"failure_reason":"motor_jam"')
end

local function inventory()
  local slots = {}
  for s = 1, 6 do
    slots[s] = string.format('{"slot":"A%d","product_id":"p-%d","count":%d,"capacity":10,"low_threshold":2}',
      s, s, math.random(0, 10))
  end
  return "inventory", '{"slots":[' .. table.concat(slots, ",") .. ']}'
end

local networks = {"4g", "5g", "wifi", "ethernet"}
local function connectivity()
  return "connectivity", string.format('{"network":"%s","signal_dbm":%.0f,"latency_ms":%.0f}',
    networks[math.random(#networks)], -50 - math.random() * 60, 20 + math.random() * 300)
end

local codes = {"coin_jam", "bill_jam", "cooling_failure", "door_sensor"}
local function fault()
  return "fault", string.format('{"code":"%s","state":"%s","component":"vend"}',
    codes[math.random(#codes)], math.random(2) == 1 and "raised" or "cleared")
end

-- weights out of 100: telemetry 40, heartbeat 20, sale 20, inventory 5, connectivity 10, fault 5
local function pick(k)
  local r = math.random(100)
  if r <= 40 then return telemetry() end
  if r <= 60 then return heartbeat() end
  if r <= 80 then return sale(k) end
  if r <= 85 then return inventory() end
  if r <= 95 then return connectivity() end
  return fault()
end

function request()
  counter = counter + 1
  local i = (counter * 7919 + tid * 104729) % #devices + 1
  local dev = devices[i]
  local parts = {}
  for k = 1, batch do
    local typ, data = pick(k)
    parts[k] = string.format('{"event_id":"%s-%d-%d-%d","device_id":"%s","type":"%s","occurred_at":"%s","seq":%d,"data":%s}',
      run, tid, counter, k, dev, typ, now, counter * batch + k, data)
  end
  local body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/events", {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, body)
end
