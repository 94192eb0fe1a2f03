"""See ARCHITECTURE.md.

litellm fetches its price list from the network when it is imported unless told not to. It is
told here, before any module of this package can import it: Sluice reaches no network but the
integrations' and models' own, and prices stay those of the pinned version (`codegen.prices`).
"""

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
