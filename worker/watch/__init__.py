"""Watching the bill: budgets with forecasts, spend anomalies, and notifications on state changes.

Modules: ``spend`` (exact daily spend read from the synced bill), ``forecast`` (expected spend per
day: weekday medians scaled to the recent level), ``budgets`` (period spend, forecast, status),
``anomalies`` (robust, day-of-week aware judgement of each day), ``notify`` (webhook messages and
their delivery from the outbox), ``service`` (what `run` does at each poll: evaluate when the data
changed, store the results for /metrics and the dashboard, queue and send notifications),
``metrics`` (the /metrics series), ``commands`` (the `budgets` and `anomalies` commands).
"""
