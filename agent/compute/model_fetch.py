"""Models fetched over the mesh: a node that must run a model it lacks gets it in chunks.

The requester asks the holder (the task's entry node, which validated the
task with that very model) for 1 MiB pieces, a few at a time; every piece
crosses the emulated links as a routed frame (per-hop acks, retransmission,
store-and-forward, like a task).  A piece that does not come back in time is
asked for again.  The assembled bytes must hash to the sha256 the task
named, and then pass the same checks as an upload (``ModelStore.put_version``):
nothing unverified is ever loaded.  A fetched model is kept by its digest
only, so a task never replaces the executor's own model of the same name.  Concurrent tasks for the same model
share one fetch.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import trio

from agent import entropy, wallclock
from agent.compute.models import ModelError, ModelStore, UploadError
from mesh.wire import ModelChunk, ModelFetch

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20          # well under the 8 MiB frame limit; 40 pieces for the largest zoo model
MAX_CHUNK_BYTES = 4 << 20      # what a holder serves per request, whatever is asked
WINDOW = 4                     # pieces in flight per fetch
PIECE_TIMEOUT_S = 5.0          # ask again after this (per-hop retransmission covers loss below it)
PIECE_ATTEMPTS = 4


class ModelFetcher:
    def __init__(self, me: str, store: ModelStore, send: Callable[[ModelFetch | ModelChunk, str], None], ttl: int):
        self.me = me
        self.store = store
        self.send = send
        self.ttl = ttl
        self._active: dict[str, trio.Event] = {}
        self._errors: dict[str, str] = {}
        self._waiting: dict[tuple[str, int], trio.MemorySendChannel] = {}
        self.fetched = 0
        self.served_bytes = 0

    # -- requester ------------------------------------------------------------------------

    async def fetch(self, name: str, sha256: str, holder: str, deadline: float) -> None:
        """Get ``name`` at version ``sha256`` from ``holder`` into the store (by digest: whatever
        ``name`` means here stays as it is); ModelError with the reason."""
        if self.store.has_version(name, sha256):
            return
        running = self._active.get(sha256)
        if running is not None:
            await running.wait()
            if not self.store.has_version(name, sha256):
                raise ModelError(self._errors.get(sha256, f"fetching {name!r} from {holder} failed"))
            return
        done = self._active[sha256] = trio.Event()
        started = wallclock.now()
        try:
            data = await self._pieces(entropy.hex_id(16), name, sha256, holder, deadline)
            got = hashlib.sha256(data).hexdigest()
            if got != sha256:
                raise ModelError(f"model {name!r} from {holder} hashes to {got}, not {sha256}: discarded")
            try:
                await trio.to_thread.run_sync(self.store.put_version, name, data, sha256)
            except UploadError as exc:
                raise ModelError(f"model {name!r} from {holder} refused: {exc}") from None
            self.fetched += 1
            log.info("%s: fetched %s (%d bytes) from %s in %.2f s", self.me, name, len(data), holder,
                     wallclock.now() - started)
        except ModelError as exc:
            self._errors[sha256] = str(exc)
            raise
        finally:
            del self._active[sha256]
            done.set()

    async def _pieces(self, fid: str, name: str, sha256: str, holder: str, deadline: float) -> bytes:
        first = await self._piece(fid, name, sha256, holder, 0, deadline)
        total = first.total
        if total > self.store.max_model_bytes:
            raise ModelError(f"model {name!r} at {holder} is {total} bytes, over the "
                             f"{self.store.max_model_bytes}-byte limit")
        pieces = {0: first.data}
        window = trio.CapacityLimiter(WINDOW)

        async def get(offset: int) -> None:
            async with window:
                pieces[offset] = (await self._piece(fid, name, sha256, holder, offset, deadline)).data

        async with trio.open_nursery() as nursery:
            for offset in range(len(first.data), total, CHUNK_BYTES):
                nursery.start_soon(get, offset)
        data = b"".join(pieces[o] for o in sorted(pieces))
        if len(data) != total:
            raise ModelError(f"model {name!r} from {holder}: got {len(data)} of {total} bytes")
        return data

    async def _piece(self, fid: str, name: str, sha256: str, holder: str, offset: int, deadline: float) -> ModelChunk:
        for attempt in range(PIECE_ATTEMPTS):
            left = deadline - wallclock.now()
            if left <= 0:
                break
            send, recv = trio.open_memory_channel(1)
            self._waiting[(fid, offset)] = send
            try:
                self.send(ModelFetch(fid, self.me, holder, name, sha256, offset, CHUNK_BYTES, self.ttl, deadline,
                                     attempt), holder)
                with trio.move_on_after(min(PIECE_TIMEOUT_S, left)):
                    chunk = await recv.receive()
                    if chunk.error:
                        raise ModelError(f"{holder} cannot serve model {name!r}: {chunk.error}")
                    return chunk
            finally:
                self._waiting.pop((fid, offset), None)
        raise ModelError(f"no answer from {holder} for bytes {offset}… of model {name!r} "
                         f"after {PIECE_ATTEMPTS} tries")

    def on_chunk(self, chunk: ModelChunk) -> None:
        send = self._waiting.get((chunk.fetch_id, chunk.offset))
        if send is not None:
            try:
                send.send_nowait(chunk)
            except trio.WouldBlock:
                pass      # a repeat of a piece already delivered

    # -- holder -------------------------------------------------------------------------------

    def serve(self, req: ModelFetch) -> ModelChunk:
        """The piece asked for, or a chunk carrying the reason it cannot be served."""
        def refuse(why: str) -> ModelChunk:
            return ModelChunk(req.fetch_id, req.requester, self.me, req.sha256, req.offset, 0, b"", self.ttl,
                              req.deadline, req.attempt, error=why)

        try:
            path = self.store.version_path(req.model, req.sha256)
            if path is None:
                return refuse(f"{self.me} has no model {req.model!r} with sha256 {req.sha256[:12]}…")
            total = path.stat().st_size
            with open(path, "rb") as f:
                f.seek(min(req.offset, total))
                data = f.read(min(req.length, MAX_CHUNK_BYTES))
        except (OSError, ModelError) as exc:
            return refuse(f"{self.me}: {exc}")
        self.served_bytes += len(data)
        return ModelChunk(req.fetch_id, req.requester, self.me, req.sha256, req.offset, total, data, self.ttl,
                          req.deadline, req.attempt)
