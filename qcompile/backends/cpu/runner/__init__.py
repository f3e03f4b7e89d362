"""The deploy runner's C++ source (qcompile_run.cc), built per target by backends/cpu/runtime.py."""
