"""Convert a flash-linear-attention DeltaNet / Gated DeltaNet checkpoint into an FWP checkpoint.

    python scripts/convert_fla_checkpoint.py --input fla-hub/delta_net-1.3B-100B --output_dir delta_net-1.3B-fwp

`--input` is a local FLA folder (config.json + safetensors or pytorch_model.bin, sharded or not) or a
Hub id. The output loads anywhere, CPU included, without flash-linear-attention:
`AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)`. Options FLA has and fwp_hf
does not implement are refused by name. See fwp_hf/conversion/fla.py.
"""

from fwp_hf.conversion.fla import main

if __name__ == "__main__":
    main()
