"""gcp-storage-emulator as the tests start it: `python -m tests.gcs_emulator --port=P --bucket=B`.

Two differences from Cloud Storage matter to the clients a run uses, and are bridged here:
- Downloads carry no `x-goog-generation` header. TensorStore (Orbax's array writer) reads an
  object's generation from it to commit OCDBT manifests; without it a checkpoint save fails
  with "Malformed StorageGeneration" whenever it rereads a manifest.
- The server answers one request at a time with http.server's listen backlog of 5; TensorStore
  opens dozens of connections at once, so the backlog is raised.
"""

import argparse
import sys
from http import server

from gcp_storage_emulator.handlers import objects


def _download_with_generation(request, response, storage, *args, **kwargs):
  """The emulator's download, plus the generation headers Cloud Storage sends with every object."""
  _download(request, response, storage, *args, **kwargs)
  if response.status.value in (200, 206):
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


_download = objects.download
objects.download = _download_with_generation  # Before the server module builds its routes.
server.HTTPServer.request_queue_size = 1024


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--port", type=int, required=True)
  ap.add_argument("--bucket", required=True)
  args = ap.parse_args()
  from gcp_storage_emulator.__main__ import main as emulator_main  # pylint: disable=g-import-not-at-top

  return emulator_main(["start", "--host=127.0.0.1", f"--port={args.port}", "--in-memory",
                        f"--default-bucket={args.bucket}"])


if __name__ == "__main__":
  sys.exit(main())
