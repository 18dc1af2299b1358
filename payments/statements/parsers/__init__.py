"""Bank statement parsing: MT940, ISO 20022 camt.052/053/054 and CSV, as plain data.

Pure functions over bytes; no Django, no database. See ``detect.parse_statement``.
"""
