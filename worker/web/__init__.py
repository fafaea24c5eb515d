"""The dashboard and the HTTP API (`/api/v1/`) of `cost-worker run`, on its health server's port.

auth: the UI token, sessions, CSRF and cross-site checks; views: what the pages and the API read;
chart: the daily spend chart as SVG; api: the JSON routes and their OpenAPI document; pages: the HTML
(Jinja2, autoescaped); app: the router that `worker.http` hands every request that is not a probe.
"""
