"""A trained policy served to people, with their feedback recorded in the store (`rlhf serve policy`).

    rlhf annotate add-annotator alice                  # a client's token (printed once; the store keeps its sha256)
    rlhf serve policy --checkpoint models/policy --port 8080
    rlhf serve policy --upstream http://127.0.0.1:8000/v1 --upstream-model my-model   # in front of vLLM/TGI

    curl -s http://127.0.0.1:8080/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
         -H "Content-Type: application/json" -d '{"messages": [{"role": "user", "content": "tell me about owls"}], "n": 2}'
    curl -s http://127.0.0.1:8080/v1/feedback -H "Authorization: Bearer $TOKEN" \\
         -H "Content-Type: application/json" -d '{"exchange_id": "chatcmpl-...", "choice": 1}'    # or "thumbs": "up", "rating": 4, "edited": "..."

Any OpenAI client works against /v1 (its api_key is the token). To train on what people said, list
the import in params.yaml: `store.snapshot.imports: [deployed]` (edits and choices, as preferred
pairs); thumbs are binary labels of source `deployed` (rlhf/store/binary.py).

`policy_server`: the app; `backends`: a local checkpoint (batched sampling, as the pipeline samples)
or an upstream server; `recorder`: the group-commit writer; `limits`: the defaults the CLI shows (no
heavy imports).
"""
