"""Pull an encrypted checkpoint, decrypt and verify it locally, load it with peft.

The server stores checkpoints only as ciphertext; you pull exactly those bytes,
check their SHA-256, and decrypt with your tenant key on your own machine.

    python examples/pull_and_decrypt.py --out-dir ./pulled
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import connect, dp_config, note_dataset, parser
from tg_tinker.artifacts import decrypt_to_directory, load_key_file


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=None, help="default: a temporary directory")
    args = ap.parse_args()
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="tensafe-pull-"))
    out.mkdir(parents=True, exist_ok=True)
    with connect(args) as service:
        tc = service.create_lora_training_client(args.model, rank=8, dp_config=dp_config(args))
        dataset = note_dataset(tc.get_tokenizer(), args.dataset_size)
        tc.forward_backward(dataset[: args.batch])
        tc.optim_step().result()
        saved = tc.save_weights_for_sampler("adapter-v1").result()
        pulled = service.pull_artifact_to_file(
            saved.artifact_id, out / "adapter.tsf", expected_sha256=saved.content_hash
        )
        print(f"pulled {pulled}")
        service.export_tenant_key(out / "tenant-key.json")
    decrypted = decrypt_to_directory(
        out / "adapter.tsf",
        load_key_file(out / "tenant-key.json"),
        out / "adapter",
        expected_content_hash=saved.content_hash,
        overwrite=True,
    )
    print(f"decrypted and verified: {', '.join(decrypted.files)} in {decrypted.path}")
    print(f"manifest: step {decrypted.manifest['step']}, DP {decrypted.manifest['dp']}")
    try:
        from peft import PeftModel

        from tensafe.models import load_causal_lm
    except ImportError:
        print("install tensafe[engine] to load the adapter with peft")
        return
    base = load_causal_lm(args.model)
    model = PeftModel.from_pretrained(base.model, str(decrypted.path))
    print(f"loaded into peft: {type(model).__name__} with adapter {list(model.peft_config)}")


if __name__ == "__main__":
    main()
