"""Schemathesis hooks for the conformance run (tests/conformance/run.sh).

A webhook is only genuine when its `Stripe-Signature` is the HMAC of the very
bytes sent, made at most `stripe.tolerance_secs` ago with the endpoint's
secret. No schema can say that, so a generated positive case would carry a
signature that can never match. This hook signs every case that schemathesis
means to be valid, as Stripe would; a case meant to be invalid keeps what
was generated (or left out), and the service must refuse it.
"""

import hashlib
import hmac
import json
import os
import time

import schemathesis

WEBHOOK_SECRET = os.environ["CONFORMANCE_WEBHOOK_SECRET"].encode()


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/webhooks/stripe" or case.operation.method.upper() != "POST":
        return
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return
    # The bytes `requests` sends for a JSON body: json.dumps with its defaults.
    body = json.dumps(case.body, allow_nan=False).encode("utf-8")
    timestamp = str(int(time.time()))
    signature = hmac.new(WEBHOOK_SECRET, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    case.headers = dict(case.headers or {})
    case.headers["Stripe-Signature"] = f"t={timestamp},v1={signature}"
