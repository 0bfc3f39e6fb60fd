"""Campaign declarations on Kafka and automatic declarations -> campaigns: pure rules (``rules``), runtime wiring
(``processor``)."""
