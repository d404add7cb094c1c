"""DeepSeekMoE layers, their routers and their dispatch: softmax top-k with the auxiliary balance loss (reference),
DeepSeek-V3's sigmoid routing with the auxiliary-loss-free bias (Wang et al. 2024, "Auxiliary-Loss-Free Load
Balancing Strategy for Mixture-of-Experts"), and the per-expert loop against one grouped GEMM over sorted tokens; hf.py
runs Hugging Face transformers' experts module on the same weights and routing."""
