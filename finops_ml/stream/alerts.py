"""Delivering cost-anomaly alerts to people: Slack (incoming webhook) and email (SMTP), never stalling the stream.

`AlertDispatcher.submit(alert)` returns at once: each channel has its own delivery thread and queue, so a slow
Slack or SMTP server delays only its own channel. A delivery is tried `attempts` times with exponential backoff
(each try bounded by `timeout_s`); after that the alert stays pending and is retried on the next start.

Pending deliveries live in an outbox journal (`Outbox`, one JSON object a line, appended and flushed to the OS
before the alert is handed to any channel): {"alert": {...}} when an alert is accepted, {"sent": channel,
"id": alert key} once a channel delivered it (`alert_key`: the anomaly id, id/confirmed, id/retracted). At
start the journal is read back: accepted alerts without a `sent` line for a channel are queued again (kill -9 loses
nothing), and every id ever accepted is remembered so that the same anomaly is never sent twice (at most a
delivery whose `sent` line the kill prevented is repeated).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import smtplib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

from finops_ml.fileio import atomic_path

log = logging.getLogger("finops_ml.stream.alerts")

Sender = Callable[[dict], None]  # delivers one alert or raises


def _money(value: Any) -> str:
    try:
        return f"${float(value):,.2f}"
    except (TypeError, ValueError):
        return str(value)


def alert_key(alert: dict) -> str:
    """What makes an alert message unique: its anomaly id, and which verdict it carries.

    The real-time detector raises an anomaly "open" while its day is running (the anomaly id alone), then, once the
    day is complete, "confirmed" (id/confirmed) or, for an open alert the complete day does not confirm,
    "retracted" (id/retracted). Each is published once; only a late row that flips a re-judged day's verdict back
    again publishes a status a second time, as `revision` n (id/status/n).
    """
    status = alert.get("status") or "open"
    if status == "open":
        return str(alert["anomaly_id"])
    revision = alert.get("revision")
    return f"{alert['anomaly_id']}/{status}" + (f"/{revision}" if revision and int(revision) > 1 else "")


def alert_title(alert: dict) -> str:
    if alert.get("kind") == "model_drift":  # finops_ml.training.monitoring: the message is written there
        return str(alert["title"])
    if alert.get("status") == "retracted":
        return (f"Retracted: the cost anomaly {alert.get('service')} in {alert.get('project_id')} on "
                f"{alert.get('day')} was not confirmed by the complete day")
    if alert.get("status") == "confirmed":
        return "Confirmed: " + _anomaly_title(alert)
    return _anomaly_title(alert)


def _anomaly_title(alert: dict) -> str:
    impact = alert.get("impact")
    down = alert.get("direction") == "down" or (isinstance(impact, (int, float)) and impact < 0)
    amount = _money(abs(impact)) if isinstance(impact, (int, float)) else _money(impact)
    return (f"Cost anomaly: {alert.get('service')} in {alert.get('project_id')} on {alert.get('day')}: "
            f"{_money(alert.get('actual'))} against {_money(alert.get('expected'))} expected "
            f"({amount} {'under' if down else 'over'}{_pct(alert.get('pct_deviation'))})")


def _pct(value) -> str:
    """`, +35%` (a deviation in % of the expected cost), or nothing when unknown."""
    return f", {float(value):+.0f}%" if isinstance(value, (int, float)) and value == value else ""


def alert_text(alert: dict) -> str:
    """The alert in plain text: series, cost against expectation, impact, cause and id."""
    if alert.get("kind") == "model_drift":
        return str(alert["text"])
    cause = alert.get("cause") or {}
    labels = ", ".join(f"{k}={v}" for k, v in sorted((cause.get("labels") or {}).items())) or "none"
    share = cause.get("share")
    lines = [
        alert_title(alert),
        f"series: service {alert.get('service')}, project {alert.get('project_id')}, day {alert.get('day')}",
        f"actual {_money(alert.get('actual'))}, expected {_money(alert.get('expected'))}, "
        f"impact {_money(alert.get('impact'))}{_pct(alert.get('pct_deviation'))} "
        f"(score {alert.get('score'):.3g} >= threshold {alert.get('threshold'):.3g})"
        if isinstance(alert.get("score"), (int, float)) and isinstance(alert.get("threshold"), (int, float)) else
        f"actual {_money(alert.get('actual'))}, expected {_money(alert.get('expected'))}, "
        f"impact {_money(alert.get('impact'))}{_pct(alert.get('pct_deviation'))}",
        f"cause: resource {cause.get('resource') or '-'}, sku {cause.get('sku') or '-'}"
        + (f", {float(share):.0%} of the {'drop' if alert.get('direction') == 'down' else 'rise'}"
           if isinstance(share, (int, float)) else "") + f"; labels: {labels}",
        f"anomaly id: {alert.get('anomaly_id')}" + (f"  {alert['link']}" if alert.get("link") else ""),
        f"detected at {alert.get('detected_at')}" + (f" ({alert['status']})" if alert.get("status") else ""),
    ]
    return "\n".join(lines)


def slack_payload(alert: dict) -> dict:
    """An incoming-webhook message: `text` (notifications, fallback) and blocks for the channel."""
    return {"text": alert_title(alert),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{alert_title(alert)}*"}},
                       {"type": "section", "text": {"type": "mrkdwn", "text": "```" + alert_text(alert) + "```"}}]}


def mask_url(url: str) -> str:
    """`https://hooks.slack.com/***`: a webhook URL's path is its secret, so only the scheme and host are shown."""
    parts = urllib.parse.urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}/***" if parts.scheme and parts.netloc else "***"


def webhook_problem(url: str) -> str | None:
    """What makes `url` unusable as a webhook URL (never quoting it), or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it contains a space or a control character"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http"):
        return "it does not start with https://"
    if not parts.hostname:
        return "it has no host name after https://"
    return None


def redact(text: str, secret: str) -> str:
    """`text` with `secret` (and a URL secret's path, as error messages quote it) replaced by a mask."""
    if not secret:
        return text
    text = text.replace(secret, mask_url(secret))
    parts = urllib.parse.urlsplit(secret)
    return text.replace(parts.path, "/***") if parts.netloc and len(parts.path) > 1 else text


class RedactSecrets(logging.Filter):
    """A log handler filter that masks the given secret values in every record it passes."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = redact(masked, secret)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def slack_sender(url: str, timeout_s: float) -> Sender:
    """POST the alert as incoming-webhook JSON to `url`; any non-2xx answer or network error raises (its message
    never quotes the URL: its path is the secret)."""

    def send(alert: dict) -> None:
        body = json.dumps(slack_payload(alert), default=str).encode()
        try:
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if not 200 <= response.status < 300:
                    raise RuntimeError(f"webhook answered HTTP {response.status}")
        except Exception as exc:
            raise RuntimeError(f"{mask_url(url)}: {redact(str(exc), url)}") from None

    return send


def email_sender(host: str, port: int, sender: str, to: list[str], timeout_s: float, user: str = "",
                 password: str = "", starttls: bool = False) -> Sender:
    """Send the alert as a plain-text email through the SMTP server `host:port`."""

    def send(alert: dict) -> None:
        msg = EmailMessage()
        msg["Subject"] = alert_title(alert)
        msg["From"] = sender
        msg["To"] = ", ".join(to)
        msg["X-Finops-Anomaly-Id"] = str(alert.get("anomaly_id"))
        msg["X-Finops-Alert-Key"] = alert_key(alert)
        msg.set_content(alert_text(alert))
        with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
            if starttls:
                smtp.starttls()
            if user:
                smtp.login(user, password)
            smtp.send_message(msg)

    return send


class Outbox:
    """The journal of accepted alerts and of their deliveries per channel (see the module's docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.alerts: dict[str, dict] = {}  # every accepted alert by id (payload kept while a channel is pending)
        self.sent: dict[str, set[str]] = {}  # channel -> ids delivered
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: its alert is re-accepted when the stream re-detects it
                if "alert" in item:
                    self.alerts[alert_key(item["alert"])] = item["alert"]
                elif "sent" in item:
                    self.sent.setdefault(item["sent"], set()).add(item["id"])
                elif "known" in item:
                    self.alerts.setdefault(item["known"], {})
        self._file = open(self.path, "a", encoding="utf-8")

    def pending(self, channel: str) -> list[dict]:
        done = self.sent.get(channel, set())
        return [a for i, a in self.alerts.items() if a and i not in done]

    def __contains__(self, key: str) -> bool:
        return key in self.alerts

    def _append(self, item: dict) -> None:
        if self._file.closed:  # a delivery that outlived close(): it is repeated at the next start (at-least-once)
            log.warning("outbox %s is closed; not journalled: %s", self.path, item.get("id") or "alert")
            return
        self._file.write(json.dumps(item, default=str, separators=(",", ":")) + "\n")
        self._file.flush()  # in the OS's hands: survives a kill -9 of this process

    def accept(self, alert: dict) -> bool:
        """Journal a new alert; False if this alert (`alert_key`) was accepted before."""
        with self._lock:
            key = alert_key(alert)
            if key in self.alerts:
                return False
            self.alerts[key] = alert
            self._append({"alert": alert})
            return True

    def mark_sent(self, channel: str, key: str) -> None:
        with self._lock:
            self.sent.setdefault(channel, set()).add(key)
            self._append({"sent": channel, "id": key})

    def compact(self, channels: list[str]) -> None:
        """Rewrite the journal: payloads only of alerts still pending on a channel, bare ids of the others."""
        with self._lock:
            self._file.close()
            with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                for anomaly_id, alert in self.alerts.items():
                    pending = alert and any(anomaly_id not in self.sent.get(c, set()) for c in channels)
                    item = {"alert": alert} if pending else {"known": anomaly_id}
                    f.write(json.dumps(item, default=str, separators=(",", ":")) + "\n")
                    for c in channels:
                        if pending and anomaly_id in self.sent.get(c, set()):
                            f.write(json.dumps({"sent": c, "id": anomaly_id}) + "\n")
            for anomaly_id, alert in list(self.alerts.items()):
                if not any(anomaly_id not in self.sent.get(c, set()) for c in channels):
                    self.alerts[anomaly_id] = {}
            self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    def delays(self) -> list[float]:
        """Waits before the 2nd, 3rd ... attempt."""
        return [min(self.backoff_s * 2 ** i, self.backoff_max_s) for i in range(self.attempts - 1)]


@dataclass
class _Channel:
    name: str
    send: Sender
    queue: "queue.Queue[dict | None]" = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None
    busy: bool = False


class AlertDispatcher:
    """Per-channel delivery threads over an `Outbox`; `submit` never blocks on a channel."""

    def __init__(self, outbox: Outbox, senders: dict[str, Sender], retry: RetryPolicy | None = None,
                 on_result: Callable[[str, bool, float], None] | None = None):
        self.outbox = outbox
        self.retry = retry or RetryPolicy()
        self.on_result = on_result or (lambda channel, ok, seconds: None)
        self._stop = threading.Event()  # set: stop retrying and waiting; what is left stays pending
        self.channels = {name: _Channel(name, send) for name, send in senders.items()}
        self.failed: dict[str, int] = {name: 0 for name in senders}
        self.delivered: dict[str, int] = {name: 0 for name in senders}

    def start(self) -> "AlertDispatcher":
        """Start the delivery threads, with the alerts left pending by earlier runs queued first."""
        for channel in self.channels.values():
            for alert in self.outbox.pending(channel.name):
                channel.queue.put(alert)
            channel.thread = threading.Thread(target=self._run, args=(channel,), name=f"alerts-{channel.name}",
                                              daemon=True)
            channel.thread.start()
        return self

    def pending(self, channel: str) -> int:
        c = self.channels[channel]
        return c.queue.qsize() + int(c.busy)

    def submit(self, alert: dict) -> bool:
        """Accept an alert for delivery on every channel; False (nothing sent) if its id was accepted before."""
        if not self.outbox.accept(alert):
            return False
        for channel in self.channels.values():
            channel.queue.put(alert)
        return True

    def _run(self, channel: _Channel) -> None:
        while True:
            alert = channel.queue.get()
            if alert is None:
                return
            channel.busy = True
            try:
                self._deliver(channel, alert)
            finally:
                channel.busy = False

    def _deliver(self, channel: _Channel, alert: dict) -> None:
        delays = self.retry.delays()
        for attempt in range(self.retry.attempts):
            if self._stop.is_set():
                return  # shutting down: stays pending in the outbox
            t0 = time.perf_counter()
            try:
                channel.send(alert)
            except Exception as exc:  # noqa: BLE001 - any failure of the remote end is retried, then kept
                self.on_result(channel.name, False, time.perf_counter() - t0)
                log.warning("alert %s: %s delivery attempt %d/%d failed: %s", alert.get("anomaly_id"),
                            channel.name, attempt + 1, self.retry.attempts, exc)
                if attempt < len(delays) and self._stop.wait(delays[attempt]):
                    return
                continue
            self.outbox.mark_sent(channel.name, alert_key(alert))
            self.delivered[channel.name] += 1
            self.on_result(channel.name, True, time.perf_counter() - t0)
            return
        self.failed[channel.name] += 1
        log.error("alert %s: %s delivery failed %d times; kept pending in %s for the next start",
                  alert.get("anomaly_id"), channel.name, self.retry.attempts, self.outbox.path)

    def close(self, timeout_s: float) -> dict[str, int]:
        """Let the queues drain for up to `timeout_s`, then stop; returns what is still pending per channel."""
        deadline = time.monotonic() + timeout_s
        for channel in self.channels.values():
            channel.queue.put(None)
        for channel in self.channels.values():
            if channel.thread is not None:
                channel.thread.join(max(deadline - time.monotonic(), 0.0))
        self._stop.set()
        for channel in self.channels.values():
            if channel.thread is not None:
                channel.thread.join(2.0)  # an attempt in flight ends within its own timeout
        pending = {name: len(self.outbox.pending(name)) for name in self.channels}
        self.outbox.compact(list(self.channels))
        self.outbox.close()
        return pending


def slack_webhook_url(cfg, environ: dict[str, str] | None = None) -> str:
    """The webhook URL from the variable `cfg.slack_webhook_env` ('' when unset or unusable: then one warning
    names the variable and the problem, never the value)."""
    env = os.environ if environ is None else environ
    # a Kubernetes Secret written with `echo` ends in a newline: harmless, dropped
    url = env.get(cfg.slack_webhook_env, "").rstrip("\r\n")
    problem = webhook_problem(url) if url else None
    if problem:
        log.warning("%s is not a usable Slack webhook URL (%s); Slack alerts are off until it is fixed.",
                    cfg.slack_webhook_env, problem)
        return ""
    return url


def secret_values(cfg, environ: dict[str, str] | None = None) -> list[str]:
    """The secrets the config's `*_env` variables hold, raw and as used (for `RedactSecrets`)."""
    env = os.environ if environ is None else environ
    raw = [env.get(name, "") for name in (cfg.slack_webhook_env, cfg.smtp_password_env)]
    return [v for value in raw for v in {value, value.strip()} if v]


def senders_from_config(cfg, environ: dict[str, str] | None = None) -> dict[str, Sender]:
    """The channels a `StreamConfig` turns on: Slack when its webhook env variable is set, email when smtp_host is."""
    env = os.environ if environ is None else environ
    senders: dict[str, Sender] = {}
    url = slack_webhook_url(cfg, env)
    if url:
        senders["slack"] = slack_sender(url, cfg.delivery_timeout_s)
    if cfg.smtp_host and cfg.email_to:
        senders["email"] = email_sender(cfg.smtp_host, cfg.smtp_port, cfg.email_from, list(cfg.email_to),
                                        cfg.delivery_timeout_s, cfg.smtp_user, env.get(cfg.smtp_password_env, ""),
                                        cfg.smtp_starttls)
    return senders
