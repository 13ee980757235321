"""OpenFeature's Python SDK with its OFREP provider, from PyPI, as a real client of `rollout serve`.

Usage: ofrep_client.py BASE_URL FLAG IDS_FILE [TOKEN]
Prints, for each id (one per line of IDS_FILE; an empty line is no targeting key):
    ID<TAB>value<TAB>reason<TAB>error_code
with value "true"/"false", and error_code "-" when there was none.
"""
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    base_url, flag, ids_file = sys.argv[1], sys.argv[2], sys.argv[3]
    token = sys.argv[4] if len(sys.argv) > 4 else None
    headers = (lambda: {"Authorization": f"Bearer {token}"}) if token else None
    api.set_provider(OFREPProvider(base_url, headers_factory=headers, timeout=10.0))
    client = api.get_client()
    out = []
    with open(ids_file, encoding="utf-8") as ids:
        for line in ids:
            subject = line.rstrip("\n")
            context = EvaluationContext(targeting_key=subject) if subject else EvaluationContext()
            details = client.get_boolean_details(flag, False, context)
            error = details.error_code.value if details.error_code else "-"
            reason = details.reason.value if hasattr(details.reason, "value") else str(details.reason)
            out.append(f"{subject}\t{'true' if details.value else 'false'}\t{reason}\t{error}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
