"""CRM change events (Debezium) -> crm.profiles: pure rules (``rules``), runtime wiring (``processor``)."""
