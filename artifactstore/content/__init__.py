"""The content store: files and trees stored as deduplicated chunks in packs, named by BLAKE3.

Owns: chunking (FastCDC), pack files and their guards, index files and the chunk index, file and
tree manifests, the store configuration, the list of condemned objects, put/get, content
verification, and the safetensors header reader (the one file format the store parses). May
import: ``backends`` and the base modules (``errors``, ``ids``, ``native``, ``progress``) only.
"""
