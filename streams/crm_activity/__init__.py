"""Per-customer web activity for the CRM (``crm.web_activity``): rules (``rules``), runtime wiring (``processor``)."""

from passerelle.streams.crm_activity.rules import (
    CrmActivity,
    CrmActivityConfig,
    CustomerState,
    VisitorState,
    WebActivity,
)

__all__ = ["CrmActivity", "CrmActivityConfig", "CustomerState", "VisitorState", "WebActivity"]
