"""Speed and memory benchmark of fwp_hf against softmax attention (Llama with SDPA) and the hardware.

    python scripts/benchmark.py   # full run (tens of minutes on 2 CPU cores), writes benchmarks/results-cpu.{json,md}
    python scripts/benchmark.py --baseline_src /path/to/older/checkout/src   # also times that code's eager decoding
    python scripts/benchmark.py --quick --output_dir /tmp/bench   # seconds-long smoke run
    python scripts/benchmark.py --real_teacher /path/to/smollm2-135m --heldout_text held_out.jsonl   # + section 9
    python scripts/benchmark.py --only kernels --threads 1 --cpu_time   # sections 1 and 4: benchmarks/kernels-run-cpu.*
    python scripts/benchmark.py --from_json benchmarks/results-cpu.json --note "..."   # re-render a report

The sections and what each figure compares: fwp_hf/experiments/benchmark.py.
"""

from fwp_hf.experiments.benchmark import main

if __name__ == "__main__":
    main()
