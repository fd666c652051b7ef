"""Enrolment says where the counter stands: the profile's region reaches terminal_sites (issue 19),
so regional totals and travel checks work for every counter, not only those an admin placed by hand."""

from __future__ import annotations

from sqlalchemy import select

from tests.test_terminal_support import TrustKit, make_counter


def test_enrolment_sends_the_profile_region(tmp_path, world, live_server, app) -> None:
    from firmware_config.loader import load_terminal_profile
    from server.extensions import db
    from server.reconcile.models import TerminalSite
    from terminal.enrol import enrol

    files = make_counter(tmp_path / "c", TrustKit(), readers={}, bindings=[("acr122u", None)],
                         terminal_id="T-6271-0090", server_url=f"http://{live_server.host}:{live_server.port}")
    profile = load_terminal_profile(files.profile)
    assert profile.region == "62.71"
    assert enrol(profile, 0.0, code=world.enrolment_code("T-6271-0090")) is None
    with app.app_context():
        site = db.session.scalars(select(TerminalSite).where(TerminalSite.terminal_id == "T-6271-0090")).one()
        assert (site.region, site.lat, site.lon) == ("62.71", None, None)
