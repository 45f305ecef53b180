"""The investigator page at `/demo` (Gradio): fill in a transaction, see its score, decision, model version,
variant and the feature values the model used. It calls the same runtime as `/v1/score` (key check, rate
limit, contract validation, the engine's batcher) — it is a third face of the same engine, not a copy."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import gradio as gr
from fastapi import FastAPI

from scorer.engine import Request as ScoreRequest
from streamscore.contracts import CHANNELS, Transaction, parse_event
from streamscore.errors import StreamscoreError

if TYPE_CHECKING:
    from scorer.api.app import Runtime

PATH = "/demo"


def mount_demo(app: FastAPI) -> FastAPI:
    async def score(
        key: str,
        account_id: str,
        merchant_id: str,
        merchant_category: str,
        amount: float,
        currency: str,
        country: str,
        channel: str,
        device_id: str,
    ) -> tuple[str, str, str, list[list[Any]]]:
        runtime: Runtime = app.state.runtime
        try:
            name = runtime.keys.name_of(key.strip())
            runtime.limiter.take(name)
            body = {
                "event_id": f"ui-{uuid.uuid4().hex[:16]}",
                "account_id": account_id.strip(),
                "merchant_id": merchant_id.strip(),
                "merchant_category": merchant_category.strip(),
                "amount": float(amount),
                "currency": currency.strip().upper(),
                "country": country.strip().upper(),
                "channel": channel,
                "device_id": device_id.strip() or None,
                "event_time": datetime.now(UTC).isoformat(),
            }
            tx = parse_event(Transaction, json.dumps(body).encode())
            request = ScoreRequest(tx, time.time())
            if runtime.batcher is not None:
                scored = await runtime.batcher.submit(request)
            else:
                result = runtime.score_batch([request])[0]
                if isinstance(result, BaseException):
                    raise result
                scored = result
        except StreamscoreError as exc:
            return f"error: {exc}", "", "", []
        s = scored.score
        features = [[k, round(v, 6)] for k, v in (s.features or {}).items()]
        return (
            f"{s.score:.6f}",
            s.decision,
            f"{s.model_name} v{s.model_version} · variant {s.variant} · features {s.feature_status}",
            features,
        )

    with gr.Blocks(title="streamscore — score a transaction") as blocks:
        gr.Markdown("## Score a transaction\nThe same engine, models and features as the stream scorer.")
        with gr.Row():
            key = gr.Textbox(label="API key", type="password", elem_id="api-key")
            account = gr.Textbox(label="account_id", value="acct-00001", elem_id="account-id")
            merchant = gr.Textbox(label="merchant_id", value="m-001", elem_id="merchant-id")
        with gr.Row():
            mcc = gr.Textbox(label="merchant_category (MCC)", value="5411", elem_id="mcc")
            amount = gr.Number(label="amount", value=42.5, elem_id="amount")
            currency = gr.Textbox(label="currency", value="EUR", elem_id="currency")
            country = gr.Textbox(label="country", value="DE", elem_id="country")
            channel = gr.Dropdown(label="channel", choices=list(CHANNELS), value="pos", elem_id="channel")
            device = gr.Textbox(label="device_id (empty = none)", value="dev-1", elem_id="device-id")
        submit = gr.Button("Score", variant="primary", elem_id="score-button")
        with gr.Row():
            out_score = gr.Textbox(label="score", elem_id="score")
            out_decision = gr.Textbox(label="decision", elem_id="decision")
            out_model = gr.Textbox(label="model", elem_id="model")
        out_features = gr.Dataframe(headers=["feature", "value"], label="features the model used", elem_id="features")
        submit.click(
            score,
            [key, account, merchant, mcc, amount, currency, country, channel, device],
            [out_score, out_decision, out_model, out_features],
        )
    mounted: FastAPI = gr.mount_gradio_app(app, blocks, path=PATH)
    return mounted
