"""Model engines behind small protocols (see ``engines.base``).

Threading note, measured on the 2-core target (bench/threads.py): llama.cpp and CTranslate2 each bring an
OpenMP runtime. With OMP_WAIT_POLICY=PASSIVE llama.cpp decodes 3x slower (33 vs 100 tokens/s, 2 threads);
with ACTIVE both engines spin and starve each other (Whisper 0.5 s -> 0.9-1.6 s). The default policy (spin
briefly, then sleep) kept both at full speed, so voxgate leaves it alone and instead never runs them at the
same time on a shared CPU (``pipeline.workers.PriorityGate``).
"""
