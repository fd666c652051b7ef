"""The findings export names who confirmed or dismissed a finding by username (``decided_by``), as the pages do;
it wrote the person's database id (``2``), which nobody reading the CSV can resolve.
"""

from __future__ import annotations

import csv
import io

from tests.test_dashboard import _login, audit_db, plant_two_region_tap, programme  # noqa: F401 - fixtures


def test_findings_export_names_who_decided(app, programme, world) -> None:  # noqa: F811 - fixtures
    from sqlalchemy import select

    from server.extensions import db
    from server.models import Person
    from server.reconcile.models import Finding

    plant_two_region_tap(app, world, programme)
    with app.app_context():
        session = db.write_session()
        manny = session.scalars(select(Person).where(Person.username == "manny")).one()
        finding = session.scalars(select(Finding).order_by(Finding.id)).first()
        assert finding is not None
        finding.decided_by, finding.reason = manny.id, "checked with the counter"
        fid = finding.id
        session.commit()
    _login(world.client)
    body = world.client.get("/audit/export/findings.csv").get_data(as_text=True)
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(body))}
    assert rows[str(fid)]["decided_by"] == "manny", rows[str(fid)]
