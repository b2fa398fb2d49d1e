"""What the Hugging Face families share: strict config.json reading, rotary embeddings, the decoder building
blocks, the key-table machinery and the checkpoint-directory files (safetensors shards, index, tokenizer files).

No model family is known here (the families live in `models/llama/` and `models/gemma/`, the registry in
`models/pretrained.py`), and nothing here imports torch or transformers.
"""
