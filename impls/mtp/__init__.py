"""Multi-token prediction (DeepSeek-V3 §2.2): a plain causal LM (reference.py), D sequential MTP modules sharing its
embedding and output head (mtp.py), a structured synthetic language (data.py), speculative decoding with the MTP
draft against plain greedy decoding (speculative.py), and cached training (train.py)."""
