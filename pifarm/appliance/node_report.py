"""The node's fleet part: its id (from the host identity) and its reporter.

`attach(daemon)` gives the watcher the node id (rollout cohort membership works from the signed
snapshot alone, reports or not) and, with an aggregator and `[node] report_interval` > 0, a
`Reporter` the watcher pokes on every state change.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from pifarm.errors import ConfigError
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.report import Reporter
from pifarm.listen import parse_listen

log = logging.getLogger(__name__)


def report_token(node) -> str:
    if node.report_token:
        return node.report_token
    if node.report_token_file:
        try:
            return Path(node.report_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"[node] report_token_file {node.report_token_file}: {e.strerror}") from e
    return ""


def attach(daemon) -> Reporter | None:
    c = daemon.cfg
    try:
        ident = ensure_identity(c.node.host_identity or None)
    except ConfigError as e:
        log.warning("no node id (%s): this node takes no part in rollouts and sends no reports", e)
        return None
    daemon.watcher.node_id = ident.hostid
    if not c.node.aggregator_urls or c.node.report_interval <= 0:
        return None
    host, port = parse_listen(c.node.listen)
    wildcard = host in ("", "0.0.0.0", "::")
    reporter = Reporter(aggregator=c.node.aggregator_urls, node_id=ident.hostid, token=report_token(c.node),
                        interval=c.node.report_interval, state_dir=Path(c.node.state_dir), cache=daemon.cache,
                        inference_url=f"http://{'127.0.0.1' if wildcard else host}:{port}",
                        address=f"http://{socket.gethostname() if wildcard else host}:{port}",
                        tls=c.node.tls_context())
    daemon.watcher.on_state = reporter.poke
    log.info("node %s reports to %s every %g s", ident.hostid, " or ".join(c.node.aggregator_urls),
             c.node.report_interval)
    return reporter
