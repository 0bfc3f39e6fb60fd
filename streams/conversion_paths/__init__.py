"""Conversion paths: multichannel touchpoints per person, attribution models, rows for the CRM."""
