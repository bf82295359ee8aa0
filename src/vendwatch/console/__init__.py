"""The operator web console: static pages (vanilla JS, no build step) over the operator API.

``app.routes`` serves the pages at ``/`` and ``/console/...``; ``api.routes`` adds the
small read endpoints the pages need (fleet summary, enriched device views, a device's
recent events). Everything the browser runs ships in ``static/``: the console works on
a closed network.
"""
