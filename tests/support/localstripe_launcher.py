#!/usr/bin/env python3
"""Run localstripe (PyPI, 1.15.10) for the integration tests.

Usage (with the venv that has localstripe installed):

    python tests/support/localstripe_launcher.py --port 8420 \
        --state-file /tmp/localstripe-8420.pickle

Stock localstripe cannot be used as-is, so this launcher monkeypatches it in
process before starting its aiohttp app:

* It binds 127.0.0.1 only. `localstripe` itself binds `::` (every interface)
  and has no host option.
* Its state pickle goes to --state-file, not the hard-coded
  /tmp/localstripe.pickle. Parallel runs then don't share state. Every run
  starts empty.
* PaymentIntent and Event JSON get the fields that the async-stripe
  1.0.0-rc.10 deserializers require. localstripe leaves them out, and the
  Rust side then fails with "error deserializing" errors. The patch wraps
  `_export`, so API responses, list results and webhook bodies all get the
  same shape.
* It honours `Idempotency-Key` on POST /v1/*. localstripe ignores that
  header, so a retried create would make a second PaymentIntent. Like
  Stripe, it compares the request's parameters, not its bytes: the same
  parameters in another order (async-stripe sends `metadata` in HashMap
  order, which can differ from one request to the next) are the same
  request.
* A PaymentIntent whose payment failed can be paid again, as on Stripe:
  attaching a new payment method makes it `requires_confirmation`.
  localstripe derives the status from the failed charge, so it stayed
  `requires_payment_method` and refused every further confirm.
* Events carry `request.{id,idempotency_key}` of the API call that caused
  them, GET /v1/events lists newest first, and card declines come back as
  `card_error`, all as real Stripe does.
* It has Prices (`/v1/prices`), which localstripe lacks: one-time prices
  of a Product with `unit_amount`, `currency`, `active` and a `lookup_key`
  that at most one price holds (`transfer_lookup_key` moves it, as on
  Stripe); listed newest first, filtered by `product`, `active`,
  `currency` and `lookup_keys[]`. Only what the service's catalog uses
  (and Stripe documents) is there: no recurring prices, tiers or search.

Only the standard library and localstripe (plus its aiohttp) are used.
"""

import argparse
import asyncio
import contextvars
import hashlib
import json
import logging
import os
import pickle
import tempfile
import urllib.parse

from aiohttp import web

# Importing `server` builds localstripe's app and routes. Nothing touches the
# store until the first request, so patching right after the import is safe.
from localstripe import resources, server, webhooks
from localstripe.errors import UserError

# Version of the Stripe API that async-stripe 1.0.0-rc.10 is generated against
# (`stripe_shared::VERSION`). localstripe stamps events with '2017-08-15'.
DEFAULT_API_VERSION = '2026-09-30.endive'


# --------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------

def patch_state_file(path):
    """Point localstripe's Store at `path`, starting from an empty state.

    `resources.Store` hard-codes /tmp/localstripe.pickle in
    `try_load_from_disk` and `dump_to_disk`. `dump_to_disk` runs on every
    store write and after every POST/PUT/DELETE.
    """
    def dump_to_disk(self):
        # Write then rename, so a crash never leaves a half-written pickle.
        tmp = path + '.tmp'
        with open(tmp, 'wb') as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    def try_load_from_disk(self):
        try:
            with open(path, 'rb') as f:
                old = pickle.load(f)
        except FileNotFoundError:
            return
        self.clear()
        self.update(old)

    resources.Store.dump_to_disk = dump_to_disk
    resources.Store.try_load_from_disk = try_load_from_disk

    # Tests need to be repeatable, so every run starts empty: never load the
    # old state and replace whatever file is already there.
    resources.store.clear()
    resources.store.dump_to_disk()


# --------------------------------------------------------------------------
# Per-request context (feeds event.request and the Request-Id header)
# --------------------------------------------------------------------------

# Set by `request_middleware` for the length of each API call. Events are
# built synchronously inside the handler, so Event.__init__ can read it.
_current_request = contextvars.ContextVar('current_request', default=None)


def _null_request():
    return {'id': None, 'idempotency_key': None}


# --------------------------------------------------------------------------
# Object shapes for async-stripe
# --------------------------------------------------------------------------

# Optional PaymentIntent fields that localstripe never sets. async-stripe
# would treat a missing field as None anyway. Sending explicit nulls makes
# the JSON look like real Stripe, so code that reads the raw JSON also works.
_PI_NULL_FIELDS = (
    'application', 'application_fee_amount', 'automatic_payment_methods',
    'canceled_at', 'cancellation_reason', 'description', 'on_behalf_of',
    'payment_method_options', 'processing', 'receipt_email', 'review',
    'setup_future_usage', 'shipping', 'source', 'statement_descriptor',
    'statement_descriptor_suffix', 'transfer_data', 'transfer_group',
)


def _expands(expand, field):
    return any(p == field or p.startswith(field + '.') for p in expand or ())


def patch_payment_intent():
    PI = resources.PaymentIntent

    # localstripe accepts `payment_method_types` on create but drops it.
    # Keep it so the export can echo it back.
    orig_init = PI.__init__

    def __init__(self, *args, payment_method_types=None, **kwargs):
        orig_init(self, *args, payment_method_types=payment_method_types,
                  **kwargs)
        if isinstance(payment_method_types, str):  # `-d pmt=card`, no []
            payment_method_types = [payment_method_types]
        self._payment_method_types = payment_method_types or ['card']

    orig_export = PI._export

    def _export(self, expand=None):
        obj = orig_export(self, expand=expand)
        status = obj['status']

        # localstripe keeps the Charge object on the PI and inlines it. Real
        # Stripe (and async-stripe's Expandable<Charge>) expects an id unless
        # the caller asked for expand[]=latest_charge. The inlined Charge is
        # also missing fields a full Charge must have.
        if not _expands(expand, 'latest_charge'):
            charge = self.latest_charge
            obj['latest_charge'] = charge.id if charge is not None else None
        # `charges` was removed from the API in 2022-11-15.
        obj.pop('charges', None)

        # Required (non-Option) fields in async-stripe's PaymentIntent.
        # localstripe captures the full amount or nothing, so these two only
        # depend on the status.
        obj['amount_capturable'] = (
            self.amount if status == 'requires_capture' else 0)
        obj['amount_received'] = self.amount if status == 'succeeded' else 0
        obj['confirmation_method'] = 'automatic'
        obj['payment_method_types'] = list(
            getattr(self, '_payment_method_types', None) or ['card'])

        # async-stripe's ApiErrors requires `type`, and localstripe leaves it
        # out. The error is a fresh dict (a property), so editing it is safe.
        err = obj.get('last_payment_error')
        if err is not None:
            if 'charge' in err:
                err['type'] = 'card_error'
                err.setdefault('decline_code', 'generic_decline')
            else:  # 3-D Secure authentication failure
                err['type'] = 'invalid_request_error'

        for key in _PI_NULL_FIELDS:
            obj.setdefault(key, None)
        return obj

    # On a decline localstripe answers 402 with type invalid_request_error.
    # Real Stripe sends a card_error that includes the failed PaymentIntent,
    # which async-stripe exposes as ApiErrors.payment_intent.
    orig_report_failure = PI._report_failure

    def _report_failure(self):
        try:
            orig_report_failure(self)
        except UserError as e:
            err = e.body['error']
            err['type'] = 'card_error'
            err.setdefault('decline_code', 'generic_decline')
            err['payment_intent'] = self._export()
            raise

    # A failed payment leaves the PI `requires_payment_method`; on Stripe,
    # attaching a new payment method then makes it `requires_confirmation`
    # and confirm charges again. localstripe computes the status from
    # `latest_charge`, which stays the failed charge, so the PI could never
    # be confirmed again. Mark the PI when a payment method is attached
    # after a failure; it reads as `requires_confirmation` until the next
    # confirm, which starts the new attempt from a clean `latest_charge`.
    # The failed charge stays in the store and in `latest_charge` until
    # then, as on Stripe.
    orig_status = PI.status

    def status(self):
        value = orig_status.fget(self)
        if (value == 'requires_payment_method' and self.payment_method
                and getattr(self, '_retry_attached', False)):
            return 'requires_confirmation'
        return value

    orig_update = PI._api_update.__func__

    def _api_update(cls, id, **data):
        obj = orig_update(cls, id, **data)
        charge = obj.latest_charge
        if (data.get('payment_method') and charge is not None
                and charge.status == 'failed'):
            obj._retry_attached = True
        return obj

    orig_create_charge = PI._create_charge

    def _create_charge(self, on_failure_now):
        if (getattr(self, '_retry_attached', False)
                and self.status == 'requires_confirmation'):
            self._retry_attached = False
            self.latest_charge = None
        return orig_create_charge(self, on_failure_now)

    PI.__init__ = __init__
    PI._export = _export
    PI._report_failure = _report_failure
    PI.status = property(status)
    PI._api_update = classmethod(_api_update)
    PI._create_charge = _create_charge


def patch_event(api_version):
    Event = resources.Event
    orig_init = Event.__init__

    def __init__(self, type, data):
        orig_init(self, type, data)
        # Record who caused the event now. By the time the webhook is sent
        # (1 s later, in a background task) the request is over.
        self._request = _current_request.get() or _null_request()
        # async-stripe's Event requires `pending_webhooks`. Use the number of
        # endpoints this event goes to. It is not decremented on delivery.
        self._pending_webhooks = sum(
            1 for hook in webhooks._webhooks.values()
            if hook.events is None or type in hook.events)

    orig_export = Event._export

    def _export(self, expand=None):
        obj = orig_export(self, expand=expand)
        obj['api_version'] = api_version
        obj['pending_webhooks'] = getattr(self, '_pending_webhooks', 0)
        obj['request'] = dict(getattr(self, '_request', None)
                              or _null_request())
        obj.setdefault('account', None)
        return obj

    # localstripe lists in insertion order (oldest first). Stripe lists
    # newest first, and `starting_after` pages toward older events.
    # Reconciliation code written against Stripe depends on that order.
    orig_list_all = Event._api_list_all.__func__

    def _api_list_all(cls, url, **kwargs):
        li = orig_list_all(cls, url, **kwargs)
        li._list.reverse()
        return li

    Event.__init__ = __init__
    Event._export = _export
    Event._api_list_all = classmethod(_api_list_all)


# --------------------------------------------------------------------------
# Prices (localstripe has Products and legacy Plans, but no Prices)
# --------------------------------------------------------------------------

class Price(resources.StripeObject):
    """A one-time Price, with the fields and rules of Stripe's Prices API
    that the service's catalog relies on."""
    object = 'price'
    _id_prefix = 'price_'

    def __init__(self, product=None, currency=None, unit_amount=None,
                 lookup_key=None, transfer_lookup_key=False, active=True,
                 nickname=None, metadata=None, **kwargs):
        _refuse_unknown(kwargs)
        unit_amount = resources.try_convert_to_int(unit_amount)
        active = resources.try_convert_to_bool(active)
        transfer_lookup_key = resources.try_convert_to_bool(
            transfer_lookup_key)
        try:
            assert type(product) is str and product
            assert type(currency) is str and len(currency) == 3
            assert type(unit_amount) is int and unit_amount >= 0
            assert lookup_key is None or (type(lookup_key) is str
                                          and 0 < len(lookup_key) <= 200)
            assert type(active) is bool
            assert type(transfer_lookup_key) is bool
        except AssertionError:
            raise UserError(400, 'Bad request')
        # Stripe answers 400 (not 404) for a create naming a missing product.
        if resources.store.get('product:' + product) is None:
            raise UserError(400, 'No such product: ' + repr(product))
        holder = _price_with_lookup_key(lookup_key)
        if holder is not None and not transfer_lookup_key:
            raise UserError(400, 'A price (`%s`) already uses that lookup '
                            'key.' % holder.id)

        # All exceptions must be raised before this point.
        super().__init__()
        if holder is not None:
            holder.lookup_key = None
        self.product = product
        self.currency = currency.lower()
        self.unit_amount = unit_amount
        self.unit_amount_decimal = str(unit_amount)
        self.lookup_key = lookup_key
        self.active = active
        self.nickname = nickname
        self.metadata = metadata or {}
        self.type = 'one_time'
        self.recurring = None
        self.billing_scheme = 'per_unit'
        self.tax_behavior = 'unspecified'
        resources.schedule_webhook(resources.Event('price.created', self))

    @classmethod
    def _api_update(cls, id, active=None, lookup_key=None,
                    transfer_lookup_key=False, nickname=None, metadata=None,
                    **kwargs):
        _refuse_unknown(kwargs)
        obj = cls._api_retrieve(id)
        active = resources.try_convert_to_bool(active)
        transfer_lookup_key = resources.try_convert_to_bool(
            transfer_lookup_key)
        if active is not None and type(active) is not bool:
            raise UserError(400, 'Bad request')
        if lookup_key == '':  # Stripe: an empty string unsets it
            lookup_key = None
            obj.lookup_key = None
        holder = _price_with_lookup_key(lookup_key)
        if holder is not None and holder is not obj:
            if not transfer_lookup_key:
                raise UserError(400, 'A price (`%s`) already uses that '
                                'lookup key.' % holder.id)
            holder.lookup_key = None
        if lookup_key is not None:
            obj.lookup_key = lookup_key
        if active is not None:
            obj.active = active
        if nickname is not None:
            obj.nickname = nickname
        if metadata:
            obj.metadata.update(metadata)
        resources.schedule_webhook(resources.Event('price.updated', obj))
        return obj

    @classmethod
    def _api_list_all(cls, url, product=None, active=None, currency=None,
                      lookup_keys=None, limit=None, starting_after=None,
                      **kwargs):
        _refuse_unknown(kwargs)
        active = resources.try_convert_to_bool(active)
        if isinstance(lookup_keys, str):
            lookup_keys = [lookup_keys]
        li = super()._api_list_all(url, limit=limit,
                                   starting_after=starting_after)
        li._list = [p for p in reversed(li._list)  # newest first, as Stripe
                    if (product is None or p.product == product)
                    and (active is None or p.active == active)
                    and (currency is None or p.currency == currency)
                    and (lookup_keys is None or p.lookup_key in lookup_keys)]
        return li


def _refuse_unknown(params):
    """Stripe's answer to a parameter the endpoint does not take."""
    if params:
        raise UserError(400, 'Received unknown parameter: '
                        + ', '.join(sorted(params.keys())))


def _price_with_lookup_key(lookup_key):
    if lookup_key is None:
        return None
    for key, obj in resources.store.items():
        if key.startswith('price:') and obj.lookup_key == lookup_key:
            return obj
    return None


def add_price_routes():
    """The same five routes localstripe gives its own resources. The app is
    not frozen until run_app, so routes can still be added."""
    url = '/v1/prices'
    for method, path, make in (
            ('POST', url, server.api_create),
            ('GET', url + '/{id}', server.api_retrieve),
            ('POST', url + '/{id}', server.api_update),
            ('GET', url, server.api_list_all)):
        server.app.router.add_route(method, path, make(Price, path))


# --------------------------------------------------------------------------
# Idempotency-Key support + request context
# --------------------------------------------------------------------------

class _Replay:
    """A saved response for one idempotency key."""

    def __init__(self, fingerprint, status, body, content_type):
        self.fingerprint = fingerprint
        self.status = status
        self.body = body
        self.content_type = content_type


# (api key, Idempotency-Key) -> _Replay. Stripe scopes keys per account, so
# the API key is part of the cache key. The cache is in memory only, which is
# fine because every run starts from an empty store anyway.
_replays = {}
# Requests that share a key run one at a time. The second one then replays
# the first one's response instead of running the handler again.
_key_locks = {}


def _api_key(request):
    # server.get_api_key raises on unusual Authorization schemes.
    try:
        return server.get_api_key(request)
    except Exception:
        return None


def _idempotency_error(key):
    return server.json_response({'error': {
        'type': 'idempotency_error',
        'message': ('Keys for idempotent requests can only be used with the '
                    'same parameters they were first used with. Try using a '
                    "key other than '%s' if you meant to execute a different "
                    'request.' % key)}}, status=400)


def _canonical_params(body):
    """The request's parameters, independent of their order.

    Form bodies (what Stripe clients send) are sorted by name; the sort is
    stable, so repeated names (`items[]=a&items[]=b`) keep their order,
    which matters. JSON bodies are re-dumped with sorted keys. Anything
    else is compared as it is.
    """
    try:
        return json.dumps(json.loads(body), sort_keys=True).encode()
    except ValueError:
        pass
    try:
        pairs = urllib.parse.parse_qsl(body.decode('utf-8'),
                                       keep_blank_values=True,
                                       strict_parsing=True)
    except ValueError:
        return body
    pairs.sort(key=lambda kv: kv[0])
    return urllib.parse.urlencode(pairs).encode()


async def _idempotent(request, handler, key):
    cache_key = (_api_key(request), key)
    # Same key, different endpoint or parameters: Stripe rejects it, so we
    # do too.
    fingerprint = hashlib.sha256(
        request.path.encode() + b'\0' +
        _canonical_params(await request.read())).hexdigest()

    lock = _key_locks.setdefault(cache_key, asyncio.Lock())
    async with lock:
        saved = _replays.get(cache_key)
        if saved is not None:
            if saved.fingerprint != fingerprint:
                return _idempotency_error(key)
            response = web.Response(status=saved.status, body=saved.body,
                                    content_type=saved.content_type)
            response.headers['Idempotent-Replayed'] = 'true'
            return response

        response = await handler(request)
        # Like Stripe, keep only results of requests that actually ran:
        # successes and card declines (402). Validation errors are not kept,
        # so a corrected retry with the same key still works.
        if (200 <= response.status < 300 or response.status == 402) \
                and isinstance(response, web.Response) \
                and response.body is not None:
            _replays[cache_key] = _Replay(fingerprint, response.status,
                                          response.body,
                                          response.content_type)
        return response


@web.middleware
async def request_middleware(request, handler):
    """Outermost middleware: request id, event context and idempotency.

    Being outermost, it sees the final response, with localstripe's
    UserError already turned into a JSON error by error_middleware.
    """
    request_id = 'req_' + resources.random_id(14)
    key = None
    if request.method == 'POST' and request.path.startswith('/v1/'):
        key = request.headers.get('Idempotency-Key') or None

    token = _current_request.set({'id': request_id, 'idempotency_key': key})
    try:
        if key is not None:
            response = await _idempotent(request, handler, key)
        else:
            response = await handler(request)
    finally:
        _current_request.reset(token)

    # DELETE /_config/data wipes the store. Saved responses would point at
    # objects that no longer exist, so drop them too.
    if request.method == 'DELETE' and request.path == '/_config/data':
        _replays.clear()

    response.headers['Request-Id'] = request_id
    return response


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--port', type=int, default=8420)
    parser.add_argument('--state-file', default=None,
                        help='pickle path (default: '
                             '$TMPDIR/localstripe-PORT.pickle)')
    parser.add_argument('--api-version', default=DEFAULT_API_VERSION,
                        help='api_version stamped on events')
    args = parser.parse_args()

    state_file = args.state_file or os.path.join(
        tempfile.gettempdir(), 'localstripe-%d.pickle' % args.port)

    patch_state_file(os.path.abspath(state_file))
    patch_payment_intent()
    patch_event(args.api_version)
    add_price_routes()
    # The app is not frozen until run_app, so its middleware list can still
    # change. Index 0 makes ours the outermost.
    server.app.middlewares.insert(0, request_middleware)

    # Same logging as `localstripe`: access log plus webhook delivery
    # results, which localstripe logs to 'aiohttp.access'.
    access_log = logging.getLogger('aiohttp.access')
    access_log.setLevel(logging.DEBUG)
    access_log.addHandler(logging.StreamHandler())

    # run_app turns SIGINT/SIGTERM into a graceful exit with status 0. The
    # short shutdown_timeout keeps open keep-alive client connections from
    # holding up test teardown.
    web.run_app(server.app, host='127.0.0.1', port=args.port,
                access_log=access_log, shutdown_timeout=2,
                print=lambda msg: print(msg, flush=True))


if __name__ == '__main__':
    main()
