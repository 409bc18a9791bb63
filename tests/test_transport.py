"""agent.links.transport in-process: one real libp2p host, links that come and go."""

from __future__ import annotations

import trio

from agent.links.p2p import load_or_create_identity, open_host, peer_id_of
from agent.links.transport import LinkLayer
from mesh.link import LinkProfile
from mesh.wire import Probe
from tests.conftest import free_port_block


async def test_a_link_that_never_connected_is_retired_with_frames_queued(tmp_path):
    # A ground station that set before its link ever came up: frames queued for
    # it can never be written, and must not keep the link (and the node's
    # readiness) alive for ever.
    me = load_or_create_identity(tmp_path / "a.key")
    far = load_or_create_identity(tmp_path / "b.key")
    nobody = f"/ip4/127.0.0.1/tcp/{free_port_block(1)}/p2p/{peer_id_of(far)}"

    async def deliver(*_):
        pass

    async with open_host(me) as host:
        links = LinkLayer("gs-a", host, {}, lambda a, b, t: 0.001, lambda peer, t: LinkProfile(), deliver,
                          seeds={}, queue_frames=16, max_frame_bytes=1 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(links.run)
            links.add_link("sat-0", nobody, peer_id_of(far), 7)     # "gs-a" < "sat-0": this side dials
            await trio.sleep(0.3)
            assert all(links.send("sat-0", Probe(k, b"")) for k in range(3)) and not links.all_up()
            links.retire_link("sat-0", 0.2)
            with trio.fail_after(5):
                while "sat-0" in links.links:
                    await trio.sleep(0.1)
            assert links.all_up()            # no links left: nothing to wait for
            nursery.cancel_scope.cancel()
