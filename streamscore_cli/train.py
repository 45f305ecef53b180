"""`streamscore train`: train a preset, export it to ONNX, register it in MLflow and apply the evaluation gate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamscore.failures import settings_error
from streamscore_cli.console import console, err_console, friendly_errors
from training.settings import PRESETS, preset_settings

if TYPE_CHECKING:  # torch, onnx and mlflow take seconds to import: only `train` itself needs them
    from training.model import EpochReport
    from training.pipeline import TrainResult


class _RichProgress:
    """Stages as a spinner line, epochs as a bar with the loss and validation PR-AUC."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.progress = progress
        self.stage: TaskID = progress.add_task("starting", total=None, info="")
        self.epochs: TaskID = progress.add_task("epochs", total=epochs, info="", visible=False)

    def on_stage(self, stage: str) -> None:
        self.progress.update(self.stage, description=stage)

    def on_epoch(self, report: EpochReport) -> None:
        best = " [green]best[/]" if report.best else ""
        info = f"loss {report.loss:.4f} · val PR-AUC {report.val_pr_auc:.4f}{best} · {report.seconds:.1f} s"
        self.progress.update(self.epochs, completed=report.epoch, visible=True, info=info)
        self.progress.console.print(f"epoch {report.epoch:>3}/{report.epochs}  {info}", highlight=False)


def result_table(result: TrainResult) -> Table:
    settings = result.settings
    registration = result.registration
    table = Table(title=f"{settings.registered_model} · {settings.architecture()} · {settings.feature_service}")
    table.add_column("")
    table.add_column("validation", justify="right")
    table.add_column("test", justify="right")
    for label, key in (
        ("PR-AUC", "pr_auc"),
        ("ROC-AUC", "roc_auc"),
        ("recall @ 1 % FPR", "recall_at_1pct_fpr"),
        ("ECE (10 bins)", "ece"),
    ):
        table.add_row(label, f"{result.validation.as_dict()[key]:.4f}", f"{result.test.as_dict()[key]:.4f}")
    table.add_row(f"baseline PR-AUC ({escape(result.baseline.rule)})", "", f"{result.baseline.pr_auc:.4f}")
    table.add_row("lift over baseline", "", f"{result.lift:.2f}x")
    _operating_point_rows(table, result)
    table.add_section()
    rows = result.rows
    table.add_row(
        "rows (fraud)",
        f"{rows['validation']:,} ({rows['validation_positives']:,})",
        f"{rows['test']:,} ({rows['test_positives']:,})",
    )
    table.add_row("train rows (fraud)", "", f"{rows['train']:,} ({rows['train_positives']:,})")
    table.add_row("epochs (best)", "", f"{result.epochs_run} ({result.best_epoch}) on {result.device}")
    if "join" in result.seconds:
        table.add_row("features joined by", "", f"{settings.feature_join} in {result.seconds['join']:.0f} s")
    table.add_section()
    table.add_row("version", "", registration.version)
    table.add_row("aliases", "", ", ".join(registration.aliases) or "—")
    gate = "[green]passed[/]" if registration.gate_passed else "[red]failed[/]"
    table.add_row("gate", "", gate)
    if registration.champion_version is not None and registration.champion_pr_auc is not None:
        table.add_row(
            f"champion v{registration.champion_version} PR-AUC",
            "",
            f"{registration.champion_pr_auc:.4f} ({registration.champion_pr_auc_source})",
        )
    table.add_row("sha256", "", result.sha256[:16] + "…")
    table.add_row("wall time", "", f"{result.seconds.get('total', 0.0):.0f} s")
    return table


def _threshold(value: float | None) -> str:
    return "off (no threshold met the objective)" if value is None else f"score ≥ {value:.4g}"


def _operating_point_rows(table: Table, result: TrainResult) -> None:
    """The operating point chosen on validation, and what it does on each split (the model card's figures)."""
    point, val, test = result.operating_point, result.decisions_validation, result.decisions_test
    if point is None or val is None or test is None:
        return
    table.add_section()
    table.add_row(
        "operating point",
        "",
        f"good customers declined ≤ {100 * point.decline_max_fpr:g} %, reviewed ≤ {100 * point.review_max_fpr:g} %",
    )
    table.add_row("decline at", "", _threshold(point.decline))
    table.add_row("review at", "", _threshold(point.review))
    for label, key in (
        ("declined (share of transactions)", "decline_rate"),
        ("precision of declines", "decline_precision"),
        ("recall: fraud declined", "decline_recall"),
        ("good customers declined (FPR)", "decline_fpr"),
        ("fraud amount declined", "decline_amount_recall"),
        ("sent to review", "review_rate"),
        ("fraud reviewed or declined", "flagged_recall"),
    ):
        table.add_row(label, f"{100 * val.as_dict()[key]:.2f} %", f"{100 * test.as_dict()[key]:.2f} %")


def train(
    config: str = typer.Option("v1", "--config", help=f"Preset: {', '.join(PRESETS)}."),
    promote: bool = typer.Option(False, "--promote", help="Make the new version champion if it passes the gate."),
    history: Path | None = typer.Option(None, help="History folder (transactions/labels parquet). [TRAIN_HISTORY_DIR]"),
    epochs: int | None = typer.Option(None, help="Most epochs (overrides the preset). [TRAIN_EPOCHS]"),
    seed: int | None = typer.Option(None, help="Seed of training and sampling. [TRAIN_SEED]"),
    device: str | None = typer.Option(None, help="auto, cpu or cuda. [TRAIN_DEVICE]"),
    join: str | None = typer.Option(
        None, help="feast (historical retrieval) or local (in-process point-in-time join). [TRAIN_FEATURE_JOIN]"
    ),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI. [TRAIN_MLFLOW_TRACKING_URI]"),
) -> None:
    """Train a fraud model on the history, export it to ONNX and register it in MLflow behind the gate."""
    with friendly_errors():
        options = {
            "history_dir": history,
            "epochs": epochs,
            "seed": seed,
            "device": device,
            "feature_join": join,
            "mlflow_tracking_uri": tracking_uri,
        }
        try:
            settings = preset_settings(config, **options)
        except (ValidationError, SettingsError) as exc:
            error = settings_error(exc, given=[name for name, value in options.items() if value is not None])
            if error is None:
                raise
            raise error from exc
        from training.pipeline import train as run_training

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, TextColumn("{task.fields[info]}"), console=console, transient=True) as progress:
            result = run_training(settings, _RichProgress(progress, settings.epochs), promote=promote)
    console.print(result_table(result))
    console.print("[dim]wall time: " + " · ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()) + "[/]")
    for note in result.registration.notes:
        console.print(f"[dim]{escape(note)}[/]")
    if not result.registration.gate_passed:
        for reason in result.registration.reasons:
            err_console.print(f"[bold red]gate:[/] {escape(reason)}", highlight=False)
        err_console.print(f"version {result.registration.version} is registered without an alias")
        raise typer.Exit(1)
