"""Several models and LoRA adapters behind one gateway: one model pool per served model id, sans-I/O.

Each backend serves a set of model ids, read from its `/v1/models` (vLLM lists its served name and every loaded
LoRA adapter, an adapter with `parent` = the base model) or pinned in the config (`backend_models`). Every id
gets a **pool**: its own admission queue (`RequestPolicy`), router and prefix index (inside the router), a
`Dispatcher` over the gateway's one backend list that takes only the backends serving the id. A request goes
to the pool its `model` field names; without `model`, to the only base model when there is exactly one.

LoRA adapters: the pools of the adapters of one base model share one router (`adapter_router`, `lora-affinity`
by default), so that it sees every adapter's requests on every backend: it prefers a backend where the adapter
is active (vLLM's `vllm:lora_requests_info` gauge, scraped into the snapshot's `AdapterState`) or was sent
recently, and balances otherwise. When `router` and `adapter_router` are the same policy, the base model's
pool shares that router too, so its load counts cover the base model's requests as well (one router per model
family, as in the simulator).

A backend whose models are not known (it has not answered `/v1/models` usably, e.g. a server without that
route) serves the *unnamed* pool: requests naming no served model go there, as before model pools existed.

`Pools` offers the `Dispatcher` interface the asyncio shell uses (submit, dispatch, first_token, finish, retry,
scraped, membership), each request's calls going to its pool (`Request.model`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from llmsched.core.types import AdapterState, InstanceSnapshot, Request
from llmsched.gateway.breaker import CircuitBreaker
from llmsched.gateway.config import GatewayConfig, PolicyConfig
from llmsched.gateway.dispatcher import (
    Backend,
    Dispatcher,
    add_backend_to,
    drain_backend,
    find_backend,
    scrape_succeeded,
)
from llmsched.gateway.openai_req import BadRequest
from llmsched.gateway.scrape import LORA_INFO, RUNNING, Sample
from llmsched.policies.instance import ROUTERS
from llmsched.policies.instance.base import Router
from llmsched.policies.request import REQUEST_POLICIES

UNNAMED = "*"  # the metrics label of the unnamed pool


@dataclass(slots=True)
class Pool:
    """The policy state of one served model id."""

    key: str | None  # the model id; None: the unnamed pool (backends whose models are unknown)
    parent: str | None  # the base model of an adapter; None for a base model
    d: Dispatcher
    policy_name: str
    router_name: str
    shared_router: bool  # the router is its model family's (base model and adapters), shared with the family
    uses_index: bool  # its router reads the prompt's block hashes (prefix-aware)

    @property
    def label(self) -> str:
        return UNNAMED if self.key is None else self.key


# -- what backends say ----------------------------------------------------------------------------------------
def parse_model_list(raw: bytes) -> list[dict[str, Any]] | None:
    """The model cards of an OpenAI `/v1/models` answer; None when it is not one (then the models are unknown)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return None
    cards = [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str) and c["id"]]
    return cards or None


def pinned_cards(ids: Iterable[str], adapters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Cards for model ids pinned in the config: base models, and the ids named in `adapters` (the config's
    `adapters: {adapter: base}`) as LoRA adapters with that `parent`."""
    parents = adapters or {}
    return [{"id": m, "object": "model", "owned_by": "llmsched", "root": m, "parent": parents.get(m)} for m in ids]


def lora_state(samples: list[Sample]) -> AdapterState | None:
    """vLLM's `vllm:lora_requests_info` gauge -> `AdapterState`; None when the page has none (LoRA off). Read
    from the samples the scrape kept (`scrape.read_samples`), so that the page is not parsed a second time.

    The gauge's labels say it all (`max_lora`, `running_lora_adapters`, `waiting_lora_adapters`: names joined by
    commas) and its value is the time it was set; Prometheus keeps every label set ever set, so the current one
    is the series with the largest value. The gauge has no `engine` label: a data-parallel server's engines
    (E distinct `engine` labels on `vllm:num_requests_running`) each set their own label set, so the E latest
    label sets are read as the engines' states (vLLM warns the gauge may mislead with data parallelism; an
    engine that logged twice since another's last set hides that one): adapters running or waiting on any,
    and E x `max_lora` slots.
    """
    sets = [(labels, v) for name, labels, v in samples if name == LORA_INFO and math.isfinite(v)]
    if not sets:
        return None
    engines = len({labels.get("engine", "") for name, labels, _ in samples if name == RUNNING}) or 1
    sets.sort(key=lambda s: -s[1])
    latest = [labels for labels, _ in sets[:engines]]

    def names(label: str) -> tuple[str, ...]:
        return tuple(sorted({a for labels in latest for a in labels.get(label, "").split(",") if a}))

    try:
        max_loras = max(1, int(float(latest[0].get("max_lora", "1"))))
    except ValueError:
        max_loras = 1
    return AdapterState(max_loras * engines, names("running_lora_adapters"), names("waiting_lora_adapters"))


def with_lora(snap: InstanceSnapshot, samples: list[Sample]) -> InstanceSnapshot:
    """The snapshot with the adapter state of the same `/metrics` page's samples (unchanged when it has none)."""
    state = lora_state(samples)
    return snap if state is None else replace(snap, adapters=state)


# -- the pools ------------------------------------------------------------------------------------------------
class Pools:
    """Every model pool of a gateway over one backend list; the `Dispatcher` interface, per request's pool."""

    def __init__(self, cfg: GatewayConfig, now: float = 0.0) -> None:
        self.cfg = cfg
        b = cfg.breaker
        self.breaker_factory: Callable[[], CircuitBreaker] = lambda: CircuitBreaker(b.failure_threshold, b.cooldown)
        self.backends: list[Backend] = []
        self.pools: dict[str | None, Pool] = {}
        self._adapter_routers: dict[str, Router] = {}
        self.unnamed = self._pool(None, None)
        for url in cfg.backends:
            self.add_backend(url, now)

    # -- pools ----------------------------------------------------------------------------------------------
    def _pool(self, key: str | None, parent: str | None) -> Pool:
        p = self.pools.get(key)
        if p is not None:
            return p
        cfg = self.cfg
        over = cfg.model_policies.get(key or "") or (cfg.model_policies.get(parent) if parent else None)
        pc: PolicyConfig = (over.request_policy if over else None) or cfg.request_policy
        policy = REQUEST_POLICIES.create(pc.name, pc.params)
        own = over.router if over is not None and (parent is None or key in cfg.model_policies) else None
        family = parent if parent is not None else key if cfg.router == cfg.adapter_router else None
        if own is None and family is not None:  # the family's router: adapters, and the base when it is the same
            rc = cfg.adapter_router
            router = self._adapter_routers.get(family)
            if router is None:
                router = self._adapter_routers[family] = ROUTERS.create(rc.name, rc.params)
        else:
            rc = own or cfg.router
            router = ROUTERS.create(rc.name, rc.params)

        def serves(b: Backend, k: str | None = key) -> bool:
            return b.models is None if k is None else (b.models is not None and k in b.models)

        d = Dispatcher(policy, router, cfg.max_in_flight_per_backend, cfg.queue_bound, self.breaker_factory,
                       backends=self.backends, serves=serves)
        p = self.pools[key] = Pool(key, parent, d, pc.name, rc.name, own is None and family is not None,
                                   bool(getattr(router, "uses_index", False)))
        return p

    def pool_of(self, req: Request) -> Dispatcher:
        return self.pools[req.model].d

    def served(self) -> dict[str, Pool]:
        """Named pools with a backend serving them (draining ones count: the model is back when they are)."""
        ids: set[str] = set()
        for b in self.backends:
            if b.models and not b.removed:
                ids.update(b.models)
        return {k: p for k, p in self.pools.items() if k is not None and k in ids}

    def _serving(self, key: str) -> bool:
        for b in self.backends:  # noqa: SIM110 - on every request: no generator
            if b.models is not None and key in b.models and not b.removed:
                return True
        return False

    def _has_unnamed(self) -> bool:
        """A backend answered /v1/models without a usable list (one not reached yet does not count)."""
        return any(b.models is None and b.probed and not b.removed for b in self.backends)

    def resolve(self, model: str | None) -> Pool:
        """The pool a request naming `model` goes to. BadRequest: 404 naming the served models, or 400 when
        `model` is missing and several base models are served."""
        if model is not None:
            p = self.pools.get(model)
            if p is not None and p.key is not None and self._serving(model):
                return p
            served = self.served()
            if self._has_unnamed() or not served:
                return self.unnamed
            raise BadRequest(f"The model `{model}` does not exist; this gateway serves: {', '.join(sorted(served))}",
                             "model", 404, "model_not_found")
        bases = [p for k, p in self.pools.items() if k is not None and p.parent is None and self._serving(k)]
        if len(bases) == 1:
            return bases[0]
        if not bases:
            return self.unnamed
        raise BadRequest(f"'model' is required: this gateway serves several models "
                         f"({', '.join(sorted(p.key for p in bases if p.key))})", "model")

    @staticmethod
    def assign(req: Request, pool: Pool) -> None:
        req.model = pool.key
        req.adapter = pool.key if pool.parent is not None else None

    def set_models(self, i: int, cards: list[dict[str, Any]] | None) -> bool:
        """Backend `i` serves these models (None: not known). True if its set changed (it moved pools)."""
        b = self.backends[i]
        b.probed = True
        if cards is None:
            changed = b.models is not None
            b.models, b.cards = None, {}
            return changed
        by_id = {c["id"]: c for c in cards}
        for mid, c in by_id.items():
            parent = c.get("parent")
            self._pool(mid, parent if isinstance(parent, str) and parent and parent != mid else None)
        models = frozenset(by_id)
        changed = models != b.models
        b.models, b.cards = models, by_id
        return changed

    def model_cards(self) -> list[dict[str, Any]]:
        """The union of the served models' cards (the first backend's card of each id), base models first."""
        out: dict[str, dict[str, Any]] = {}
        for b in self.backends:
            if b.removed or not b.models:
                continue
            for mid in sorted(b.cards):
                out.setdefault(mid, b.cards[mid])
        return sorted(out.values(), key=lambda c: (c.get("parent") is not None, c["id"]))

    def healthy_backends(self, model: str | None, now: float) -> list[Backend]:
        """The backends that may take a request for `model` now (those of its pool: serving it, not draining,
        breaker closed or probing; the in-flight cap ignored), for routes with no routing state (tokenisation).
        BadRequest as `resolve`."""
        d = self.resolve(model).d
        return [b for b in self.backends if d._eligible(b, now, cap=False)]

    def routers(self) -> list[tuple[str, str, Router]]:
        """(label, router name, router) once per router object. A family's shared router is labelled with its
        base model when the base pool uses it too, else `<base> adapters`."""
        out: dict[int, tuple[str, str, Router]] = {}
        for p in self.pools.values():
            r = p.d.router
            if p.parent is None or id(r) not in out:
                out[id(r)] = (f"{p.parent} adapters" if p.parent is not None else p.label, p.router_name, r)
        return list(out.values())

    @property
    def default(self) -> Pool:
        """The only named base pool if there is exactly one, else the unnamed pool."""
        bases = [p for p in self.pools.values() if p.key is not None and p.parent is None]
        return bases[0] if len(bases) == 1 else self.unnamed

    @property
    def router(self) -> Router:
        return self.default.d.router

    @property
    def policy(self) -> Any:
        return self.default.d.policy

    # -- membership -----------------------------------------------------------------------------------------
    def add_backend(self, url: str, now: float) -> Backend:
        b, new = add_backend_to(self.backends, url, self.breaker_factory, now)
        if new:
            for p in self.pools.values():
                p.d.sync()
            pinned = self.cfg.backend_models.get(b.url)
            if pinned:
                self.set_models(b.index, pinned_cards(pinned, self.cfg.adapters))
        return b

    def pinned(self, url: str) -> bool:
        return url in self.cfg.backend_models

    def find(self, url: str) -> Backend | None:
        return find_backend(self.backends, url)

    def drain(self, url: str) -> Backend:
        return drain_backend(self.backends, url)

    def live(self) -> list[Backend]:
        return [b for b in self.backends if not b.removed]

    # -- admission and dispatch -----------------------------------------------------------------------------
    def submit(self, req: Request, now: float) -> bool:
        return self.pool_of(req).submit(req, now)

    def cancel(self, req: Request) -> bool:
        return self.pool_of(req).cancel(req)

    def dispatch(self, now: float) -> list[tuple[Request, int]]:
        """Queued requests that may go now, one pool after another a request at a time: pools that share a
        backend share its free slots instead of the first pool taking them all."""
        active = []
        for p in self.pools.values():  # a loop, not a comprehension: this runs several times a request
            if p.d.policy:
                active.append(p.d)
        if len(active) == 1:
            return active[0].dispatch(now)
        out: list[tuple[Request, int]] = []
        while active:
            nxt = []
            for d in active:
                got = d.dispatch(now, 1)
                if got:
                    out.extend(got)
                    nxt.append(d)
            active = nxt
        return out

    def take_stranded(self, now: float) -> list[Request]:
        """Empty the queues of pools that no backend can serve any more (drained, removed, or moved pools)."""
        out: list[Request] = []
        for p in self.pools.values():
            if p.d.policy and not p.d.any_usable(now):
                out.extend(p.d.take_all(now))
        return out

    def retry(self, req: Request, failed: int, tried: frozenset[int], now: float) -> int | None:
        return self.pool_of(req).retry(req, failed, tried, now)

    def first_token(self, req: Request, i: int, now: float) -> None:
        self.pool_of(req).first_token(req, i, now)

    def finish(self, req: Request, i: int, now: float, ok: bool, backend_fault: bool | None = None) -> None:
        self.pool_of(req).finish(req, i, now, ok, backend_fault)

    @property
    def queued(self) -> int:
        n = 0
        for p in self.pools.values():  # read several times a request: no generator
            n += len(p.d.policy)
        return n

    @property
    def in_flight(self) -> int:
        n = 0
        for p in self.pools.values():
            n += p.d.in_flight
        return n

    @property
    def rejected(self) -> int:
        return sum(p.d.rejected for p in self.pools.values())

    @property
    def retried(self) -> int:
        return sum(p.d.retried for p in self.pools.values())

    # -- health ---------------------------------------------------------------------------------------------
    def scraped(self, i: int, snap: InstanceSnapshot | None, now: float) -> None:
        scrape_succeeded(self.backends[i], snap, now)
        notified: set[int] = set()
        for p in self.pools.values():
            r = id(p.d.router)
            p.d.refresh(i, snap is not None, now, notify=r not in notified)
            notified.add(r)

    def scrape_failed(self, i: int, now: float) -> None:
        self.backends[i].breaker.failure(now)
