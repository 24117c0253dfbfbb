"""Alert tasks on the control worker: evaluating the rules (beat), and sending each
delivery (queued when its incident opens or resolves, and again after a failed attempt)."""

from celery import shared_task

from .services import DELIVER_TASK, alerts_evaluate, deliveries_due, delivery_attempt


@shared_task(name="alerts.evaluate_alerts", ignore_result=True)
def evaluate_alerts() -> dict:
    counts = alerts_evaluate()
    counts["requeued"] = len(deliveries_due())
    return counts


@shared_task(name=DELIVER_TASK, ignore_result=True)
def deliver_alert(delivery_id: int) -> str | None:
    return delivery_attempt(delivery_id=delivery_id)
