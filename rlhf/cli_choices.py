"""The choices and defaults `rlhf --help` shows, as plain constants: the command line builds its
parser from these without loading the modules that use them (pandas and DuckDB take most of a
second to import), and those modules read them from here, so each is written once."""

IMPORT_FORMATS = ("csv", "jsonl", "argilla", "hh-rlhf", "trl", "ultrafeedback")
ON_BAD_ROW = ("skip", "fail")
EXPORT_FORMATS = ("trl", "trl-conversational", "hf-dataset", "csv")
LOW_AGREEMENT_KAPPA = 0.2  # Landis & Koch's "slight" agreement and below
