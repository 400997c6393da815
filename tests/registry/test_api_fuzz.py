"""Property-based checks of the API on the real daemon: whatever schemathesis generates from the
served OpenAPI spec (with the write token), the aggregator answers without a server error."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.support.aggregator import start_aggregator


def test_no_server_errors_on_generated_requests(tmp_path):
    agg = start_aggregator(tmp_path / "agg", env={"PIFARM_API_MAX_UPLOAD": "65536", "PIFARM_API_WAIT_MAX": "1",
                                                  "PIFARM_API_WAIT_DEFAULT": "1"})
    try:
        schema = schemathesis.openapi.from_url(agg.url + "/openapi.json")
        auth = {"Authorization": f"Bearer {agg.token}"}
        ops = [r.ok() for r in schema.get_all_operations()]
        assert {"/v1/metadata", "/v1/blobs/{digest}", "/v1/models/{name}/versions",
                # issue 11's routes: enrollment (tokens, renewal on record) and corrupt-volume reports
                "/v1/enroll", "/v1/enroll/renew", "/v1/volumes/{name}/{version}/corrupt"} <= {op.path for op in ops}
        for op in ops:
            @given(case=op.as_strategy())
            @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                resp = case.call(headers=auth, timeout=30)
                case.validate_response(resp, checks=[not_a_server_error])
                ctype = resp.headers.get("content-type") or [""]
                ctype = ctype[0] if isinstance(ctype, list) else ctype
                if resp.status_code >= 400 and case.method != "HEAD" and ctype.startswith("application/json"):
                    body = resp.json()
                    assert isinstance(body.get("error", body.get("detail")), (str, list)), body

            check()
    finally:
        agg.stop()
