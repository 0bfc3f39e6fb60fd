"""The embedded schema registry: Confluent's REST API subset over a compacted ``_schemas`` topic.

``compatibility`` (levels, Avro checks) and ``state`` (records → subjects, ids,
configs) are pure; ``service`` gives the operations their Confluent meaning;
``store`` reads and writes the topic; ``app`` is the HTTP layer; ``server`` runs it.
"""
