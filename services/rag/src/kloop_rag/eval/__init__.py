"""Evaluation of the RAG service: retrieval recall@k and MRR against a golden set of
questions about kloop's own documentation, plus LLM-judged groundedness of the answers
when an Anthropic API key is configured. `python -m kloop_rag.eval` (make eval-rag)."""
