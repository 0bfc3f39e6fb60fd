"""The CRM crossing: the sample CRM database (migrations), CSV import of CRM exports."""
