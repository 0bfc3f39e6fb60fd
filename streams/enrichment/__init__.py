"""Pure enrichment logic for hits: campaign attribution and traffic-source classification.

Kept free of Kafka and I/O so the rules that decide where a visit came from can be
tested exhaustively without a broker and reused by any processor.
"""
