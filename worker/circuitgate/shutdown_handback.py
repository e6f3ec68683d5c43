"""Warm shutdown: the messages a worker holds but has not started go back to the queue at once.

Celery hands them back only when its broker connection closes, which is after the running
tasks end: a worker stopping during a 15-minute task keeps its prefetched messages for 15
minutes, and when Kubernetes kills it first (``terminationGracePeriodSeconds``) SQS keeps
them invisible for the whole visibility timeout (celery/celery#8875, kombu#1835). Here they
go back when the warm shutdown begins: the consumer stops fetching, then every message that
no pool process has been given (reserved and waiting for a free process, waiting for its ETA
or for a rate limit's token) is requeued, on SQS with visibility 0. A message already written
to a pool process may be running, and is left to Celery's usual path; running tasks follow
the acks-late rules as before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from celery.worker import state as worker_state

from .breaker_set import BreakerSet, release_claim
from .requeue import reject_request_now, requeue_now

__all__ = ("hand_back_on_warm_shutdown", "hand_back_unstarted")

logger = logging.getLogger(__name__)


def hand_back_on_warm_shutdown(consumer: Any, breakers: BreakerSet) -> None:
    """Hand back what the consumer holds when a warm shutdown closes it, before Celery drops
    its own record of those messages (``Consumer.on_close``, the first thing its blueprint
    does when stopping; the steps' ``stop`` come after it)."""
    blueprint = consumer.blueprint
    if getattr(blueprint, "circuitgate_hands_back", False):
        return  # the consumer restarted (a connection loss): installed already
    on_close = blueprint.on_close

    def closing() -> None:
        try:
            if _warm_shutdown() and breakers.default.settings.handback_on_shutdown:
                hand_back_unstarted(consumer, breakers)
        finally:  # whatever went wrong above, Celery's own close still runs
            if on_close is not None:
                on_close()

    blueprint.on_close = closing
    blueprint.circuitgate_hands_back = True


def _warm_shutdown() -> bool:
    """Whether the worker is stopping warm (``should_stop`` holds the exit code, 0 on a plain
    SIGTERM); not on a connection loss, which closes the consumer too, nor a cold shutdown."""
    stopping = worker_state.should_stop is not None and worker_state.should_stop is not False
    return stopping and worker_state.should_terminate in (None, False)


def hand_back_unstarted(consumer: Any, breakers: BreakerSet) -> int:
    """Requeue every message held and not started; return how many went back."""
    with contextlib.suppress(*consumer.connection_errors, AttributeError):
        consumer.task_consumer.cancel()  # or RabbitMQ would deliver them straight back to us
    _end_the_pop_in_flight(consumer)
    held = [*_not_given_to_the_pool(consumer), *_scheduled(consumer), *_rate_limited(consumer)]
    for request in held:
        _hand_back(request, breakers)
    logger.info("circuitgate: warm shutdown: handed back %d message(s) not started", len(held))
    return len(held)


def _end_the_pop_in_flight(consumer: Any) -> None:
    """End a Redis BRPOP sent before the cancel, and read its reply. Left out, it pops the
    first message to come for its whole wait (``brpop_timeout``): one handed back below, or
    one published while the running tasks drain. kombu reads that reply only when the
    connection closes (``Channel.close``), after those tasks, and a pod killed first loses
    the message, which Redis has already taken off the list. ``CLIENT UNBLOCK`` makes the
    BRPOP answer at once; where it is refused, the read waits out the BRPOP. A message the
    reply carries finds no consumer, and kombu puts it back at once (``Requeuing
    undeliverable message``)."""
    channel: Any = getattr(consumer.task_consumer, "channel", None)
    connection = getattr(channel, "_in_poll", None)
    if not connection:
        return  # not Redis, or no BRPOP out
    _unblock(channel, connection)
    wait = float(getattr(channel, "brpop_timeout", 0) or 0) + 1.0
    with contextlib.suppress(queue.Empty, *consumer.connection_errors):
        if connection.can_read(timeout=wait):
            channel.handlers["BRPOP"]()


def _unblock(channel: Any, connection: Any) -> None:
    """``CLIENT UNBLOCK`` the server's client whose address is ``connection``'s socket.
    Best effort: a refusal, no match or any error leaves the read to wait."""
    client = None
    try:
        here = _address(connection._sock.getsockname())
        client = _short_lived_client(channel)
        for entry in client.client_list():
            if _address(entry.get("addr", ":0")) == here:
                client.client_unblock(int(entry["id"]))
                return
    except Exception as exc:  # a refusal (ACL), a Unix socket, a transport built otherwise
        logger.info("circuitgate: warm shutdown: could not unblock the BRPOP: %r", exc)
    finally:
        if client is not None:
            client.connection_pool.disconnect()


def _short_lived_client(channel: Any) -> Any:
    """A client of the server the channel's BRPOP went to, waiting 2 s at most: on Sentinel
    the master it names (kombu's ``SentinelChannel``), elsewhere a pool of the channel's own
    parameters. Both are kombu's, hence the private names."""
    bounded = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    params = {**channel._connparams(), **bounded}
    sentinel = getattr(channel, "_async_sentinel_manager", None)
    if sentinel is not None:
        return sentinel.master_for(
            channel.master_name, connection_class=params["connection_class"], **bounded
        )
    return channel.Client(connection_pool=type(channel.async_pool)(**params))


def _address(where: str | tuple[Any, ...]) -> tuple[str, int]:
    """``(host, port)`` from a socket's name or Redis's ``addr`` (``[::1]:6379`` for IPv6)."""
    if isinstance(where, tuple):
        return str(where[0]), int(where[1])
    host, _, port = where.rpartition(":")
    return host.strip("[]"), int(port or 0)


def _not_given_to_the_pool(consumer: Any) -> Iterator[Any]:
    """Reserved requests no pool process has been given, taken out of where they wait. The
    prefork pool's are left waiting for a free process in its semaphore, which closing the
    pool (the worker's first step in a warm shutdown, before the consumer's) has emptied:
    they would never run, they only wait for the connection to close. Jobs in the prefork
    pool's outbound buffer were sent to no process yet; the threads pool's are futures."""
    buffered = getattr(getattr(consumer.pool, "_pool", None), "outbound_buffer", None)
    for request in list(worker_state.reserved_requests):
        if request in worker_state.active_requests:
            continue
        job = request._apply_result() if request._apply_result is not None else None
        future = getattr(job, "f", None)
        if job is None:
            pass  # never given to the pool
        elif buffered is not None and any(queued is job for queued in buffered):
            buffered.remove(job)
            job.discard()  # or the pool would wait for it at its join
        elif not (isinstance(future, Future) and future.cancel()):
            continue
        yield _forget(request)


def _forget(request: Any) -> Any:
    worker_state.reserved_requests.discard(request)
    worker_state.requests.pop(request.id, None)
    return request


def _scheduled(consumer: Any) -> Iterator[Any]:
    """Requests waiting for their ETA, their timer entries cancelled."""
    for request in list(getattr(worker_state, "scheduled_requests", ())):
        if request in worker_state.reserved_requests or request in worker_state.active_requests:
            continue  # its ETA came: reserved (and taken above, if it waits for the pool)
        entry = getattr(request, "_eta_timer_entry", None)
        if entry is not None:
            consumer.timer.cancel(entry)
        worker_state.scheduled_requests.discard(request)
        worker_state.requests.pop(request.id, None)
        yield request


def _rate_limited(consumer: Any) -> Iterator[Any]:
    """Requests waiting for a rate limit's token."""
    for bucket in getattr(consumer, "task_buckets", {}).values():
        if not bucket or not getattr(bucket, "contents", None):
            continue
        waiting = list(bucket.contents)
        bucket.clear_pending()
        for request, _tokens in waiting:
            worker_state.requests.pop(request.id, None)
            yield request


def _hand_back(request: Any, breakers: BreakerSet) -> None:
    """Requeue the request's message at once; a half-open trial it held is released."""
    release_claim(breakers, request)
    try:
        celerys = functools.partial(request.reject, requeue=True)
        requeue_now(request.message, lambda: reject_request_now(request, celerys))
    except Exception:
        # Celery's own path still requeues it when the connection closes: late, never lost.
        logger.warning("could not hand back %s at shutdown", request.id, exc_info=True)
