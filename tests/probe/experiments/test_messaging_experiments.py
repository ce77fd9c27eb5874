"""The messaging-app experiments' decisions, on a scripted network (tests/support/fake_net.py):
which endpoints they measure, how deep, and how each observation is tagged."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from probe.experiments import registry
from probe.experiments.base import InputError, Settings, Target
from probe.experiments.messaging.base import SETTINGS_KEY
from probe.experiments.messaging.endpoints import load_endpoints, parse_endpoints
from tests.support.fake_net import FakeNet, Page

LIST = """app,function,kind,host,port,path,notes
telegram,messaging,http,192.0.2.50,80,/,DC1
telegram,messaging,http,192.0.2.51,443,/,DC2
telegram,web,https,web.telegram.test,443,/,web
whatsapp,registration,https,v.whatsapp.test,443,/v2/register,
whatsapp,messaging,tcp,e1.whatsapp.test,5222,,
signal,messaging,https,chat.signal.test,443,/,
"""


def settings(tmp_path: Path, **extra: object) -> Settings:
    path = tmp_path / "endpoints.csv"
    path.write_text(LIST, encoding="utf-8")
    return Settings(extra={SETTINGS_KEY: str(path), **extra})


def run(name: str, net: FakeNet) -> list:  # type: ignore[type-arg]
    return asyncio.run(registry.get(name).run(Target(name), net))


def test_messaging_experiments_are_registered() -> None:
    for name in ("signal", "telegram", "whatsapp", "facebook_messenger"):
        exp = registry.get(name)
        assert exp.default_targets() == [Target(name)]
        assert exp.input_problem(name) is None and exp.input_problem("https://example.org/")


def test_telegram_measures_every_dc_and_the_web_with_tags(tmp_path: Path) -> None:
    net = FakeNet(settings(tmp_path), dns={"web.telegram.test": ["192.0.2.80"]}, tcp={"192.0.2.51": "generic_timeout"})
    obs = run("telegram", net)
    tags = {(type(o).__name__, o.tag) for o in obs}
    assert ("TcpConnect", "messaging@192.0.2.50:80") in tags and ("HttpRequest", "messaging@192.0.2.50:80") in tags
    assert ("TcpConnect", "messaging@192.0.2.51:443") in tags
    assert ("HttpRequest", "messaging@192.0.2.51:443") not in tags  # no HTTP after a failed connect
    assert ("TlsHandshake", "web@web.telegram.test:443") in tags and ("HttpRequest", "web@web.telegram.test:443") in tags
    assert ("DnsQuery", "web@web.telegram.test") in tags
    # DCs are addresses: no DNS for them; the cleartext DC URL keeps its port
    assert ("http", "http://192.0.2.51:443/") not in [s[:2] for s in net.steps]
    assert ("http", "http://192.0.2.50/") in [s[:2] for s in net.steps]


def test_whatsapp_registration_without_an_address_stops_at_dns(tmp_path: Path) -> None:
    net = FakeNet(settings(tmp_path), dns={"v.whatsapp.test": "dns_nxdomain", "e1.whatsapp.test": ["192.0.2.5"]})
    obs = run("whatsapp", net)
    reg = [o for o in obs if (o.tag or "").startswith("registration@")]
    assert reg and all(type(o).__name__ == "DnsQuery" and o.failure for o in reg)
    assert [s for s in net.steps if s[0] == "tcp"] == [("tcp", "192.0.2.5", 5222)]  # chat endpoint: TCP only


def test_signal_trusts_its_own_ca_beside_the_run_bundle(tmp_path: Path) -> None:
    lab_ca = tmp_path / "lab-ca.pem"
    lab_ca.write_text("(the lab's CA)", encoding="utf-8")
    s = settings(tmp_path)
    s.ca_bundle = str(lab_ca)
    seen: list[str | None] = []

    class Recording(FakeNet):
        async def http_get(self, url: str, **kw: object) -> list:  # type: ignore[override,type-arg]
            seen.append(self.ca_bundle)
            return await super().http_get(url, **kw)  # type: ignore[arg-type]

    net = Recording(s, dns={"chat.signal.test": ["192.0.2.9"]}, http={"https://chat.signal.test/": Page(404)})
    run("signal", net)
    (bundle,) = seen
    files = (bundle or "").split(os.pathsep)  # probe.net loads each (tests/probe/net: the joined bundle)
    assert files[0] == str(lab_ca)  # the run's own, then Signal's
    assert "MIIF2zCCA8OgAwIBAgIUAMHz4g60cIDBpPr1gyZ" in Path(files[1]).read_text(encoding="utf-8")
    assert net.settings.ca_bundle == str(lab_ca)  # the run's own settings are untouched


def test_a_joined_bundle_trusts_every_file(tmp_path: Path) -> None:
    import trustme
    from cryptography import x509

    from probe.net._client import verifying_context

    serials = set()
    paths = []
    for name in ("a", "b"):
        ca = trustme.CA()
        path = tmp_path / f"{name}.pem"
        ca.cert_pem.write_to_path(str(path))
        paths.append(str(path))
        serials.add(f"{x509.load_pem_x509_certificate(ca.cert_pem.bytes()).serial_number:X}")
    ctx = verifying_context(os.pathsep.join(paths), purpose="tls")
    loaded = {c["serialNumber"].lstrip("0") for c in ctx.get_ca_certs()}
    assert {s.lstrip("0") for s in serials} <= loaded


def test_a_list_without_the_app_or_a_bad_row_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="lists no endpoint for facebook_messenger"):
        run("facebook_messenger", FakeNet(settings(tmp_path)))
    with pytest.raises(InputError, match=r":3: port must be 1-65535"):
        parse_endpoints("app,function,kind,host,port\ntelegram,messaging,tcp,192.0.2.1,80\ntelegram,web,tcp,x,0\n", "f")
    with pytest.raises(InputError, match="cannot read messaging endpoints"):
        load_endpoints(tmp_path / "missing.csv", "telegram")
