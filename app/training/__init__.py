"""Fine-tuning in the app: the job model (jobs.py, no Qt), the Training panel and the fine-tuning wizard."""
