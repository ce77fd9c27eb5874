"""Messaging-app measurements for tests: endpoints as the probe would have measured them,
tagged ``<function>@<host:port>`` as probe/experiments/messaging/ tags them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from probe.schema import DnsAnswer, DnsQuery, HttpRequest, Measurement, TcpConnect, TlsHandshake, new_uuid7

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Ep:
    """One endpoint as the probe measured it; ``fail`` = (step, failure) with step one of
    dns, tcp, tls, http (None: every step worked)."""

    function: str
    host: str
    port: int = 443
    kind: str = "https"  # tcp | tls | http | https
    fail: tuple[str, str] | None = None
    ip: str = "192.0.2.10"


def app(name: str, eps: list[Ep], role: str = "probe", *, control_for: str | None = None,
        at: dt.datetime = T0) -> Measurement:
    m = Measurement(measurement_id=new_uuid7(), run_id="run-msg", experiment=name, experiment_version="0.1.0",
                    input=name, measurement_start_time=at, role=role, probe_cc="ZZ", control_for=control_for)
    step, failure = (None, None)
    for e in eps:
        step, failure = e.fail or (None, None)
        label = f"{e.host}:{e.port}"
        tag = f"{e.function}@{label}"
        is_ip = e.host[0].isdigit()
        if not is_ip:
            dns_failed = step == "dns"
            m.dns.append(DnsQuery(t0=0.0, t=0.01, failure=failure if dns_failed else None, resolver="system",
                                  engine="system", query_type="A", hostname=e.host,
                                  answers=[] if dns_failed else [DnsAnswer("A", e.ip)], tag=f"{e.function}@{e.host}"))
            if dns_failed:
                continue
        ip = e.host if is_ip else e.ip
        m.tcp.append(TcpConnect(t0=0.01, t=0.02, failure=failure if step == "tcp" else None, ip=ip, port=e.port, tag=tag))
        if step == "tcp" or e.kind == "tcp":
            continue
        if e.kind in ("tls", "https"):
            m.tls.append(TlsHandshake(t0=0.02, t=0.03, failure=failure if step == "tls" else None, ip=ip, port=e.port,
                                      sni=None if is_ip else e.host, tag=tag))
            if step == "tls":
                continue
        if e.kind in ("http", "https"):
            scheme = "https" if e.kind == "https" else "http"
            ok = step != "http"
            m.http.append(HttpRequest(t0=0.03, t=0.04, failure=None if ok else failure, url=f"{scheme}://{label}/",
                                      ip=ip, status_code=404 if ok else None, tag=tag))
    return m


def pair(name: str, probe: list[Ep], control: list[Ep] | None = None) -> tuple[list[Measurement], Measurement]:
    p = app(name, probe)
    if control is None:
        return [p], p
    return [p, app(name, control, "control", at=T0 + dt.timedelta(minutes=1))], p


DCS = [Ep("messaging", f"149.154.175.{i}", port, "http") for i in (50, 100) for port in (80, 443)]
TELEGRAM_WEB = Ep("web", "web.telegram.org")


def dropped(eps: list[Ep], failure: str = "generic_timeout") -> list[Ep]:
    return [Ep(e.function, e.host, e.port, e.kind, ("tcp", failure), e.ip) for e in eps]
