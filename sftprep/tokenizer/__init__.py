"""The tokenizer side: loading a tokenizer (`load`), the fast BPE engine (`engine`), the runtime
the workers tokenize with (`runtime`), and labels from trained spans (`labels`).

It imports nothing of the rest of sftprep, so transforms, the pipeline and the views share it.
"""
