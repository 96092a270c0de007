"""What the baselines share: replay buffers, recurrent agents, learners."""
