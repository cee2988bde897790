"""The whole flow: teach a recipe the good parts in a folder, then inspect
one part twice, as its encoded file and as a raw RGB camera buffer, and save
its heatmap overlay. Run again, it replaces the recipe's good frames.

    python examples/flow.py --server 127.0.0.1:50051 --recipe demo GOOD_DIR PART [--overlay PART.overlay.png]
"""
import argparse
import pathlib

import grpc
from PIL import Image
from loupe.v1 import inspection_pb2 as i, inspection_pb2_grpc
from loupe.v1 import recipes_pb2 as r, recipes_pb2_grpc
from loupe.v1 import types_pb2 as t

parser = argparse.ArgumentParser()
parser.add_argument("--server", default="127.0.0.1:50051")
parser.add_argument("--recipe", default="demo")
parser.add_argument("--overlay", help="where to write the heatmap overlay PNG")
parser.add_argument("good", type=pathlib.Path, help="a folder of good parts")
parser.add_argument("part", type=pathlib.Path, help="the part to inspect")
args = parser.parse_args()

limits = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
channel = grpc.insecure_channel(args.server, options=limits)
recipes = recipes_pb2_grpc.RecipesStub(channel)
inspection = inspection_pb2_grpc.InspectionStub(channel)

# A new recipe with the default settings, or the one already there.
try:
    recipes.CreateRecipe(r.CreateRecipeRequest(name=args.recipe))
except grpc.RpcError as error:
    if error.code() != grpc.StatusCode.ALREADY_EXISTS:
        raise

# The golden reference: every image in the folder, replacing earlier ones.
images = sorted(p for p in args.good.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
requests = (
    r.AddReferencesRequest(recipe=args.recipe, replace=(n == 0), name=p.name, frame=t.Frame(encoded=p.read_bytes()))
    for n, p in enumerate(images)
)
recipe = recipes.AddReferences(requests, timeout=600)
print(f"recipe {recipe.name}: {recipe.reference_count} good frames, threshold {recipe.threshold:.4f}")

# The part as its file, with an overlay for people.
heatmap = t.HeatmapOptions(format=t.HEATMAP_FORMAT_OVERLAY_PNG, max_size=512, outline_regions=True, stamp_verdict=True)
encoded = t.Frame(encoded=args.part.read_bytes())
reply = inspection.Inspect(
    i.InspectRequest(recipe=args.recipe, frame=encoded, frame_id=args.part.name, heatmap=heatmap), timeout=10
)
regions = [(g.x, g.y, g.width, g.height) for g in reply.regions]
print(f"{reply.frame_id}: {t.Verdict.Name(reply.verdict)} score {reply.score:.4f} "
      f"({reply.normalized_score:.2f} x threshold) regions {regions}")
if args.overlay:
    pathlib.Path(args.overlay).write_bytes(reply.heatmap.data)

# The same part as a camera would send it: raw RGB8, tightly packed.
rgb = Image.open(args.part).convert("RGB")
raw = t.RawImage(width=rgb.width, height=rgb.height, pixel_format=t.PIXEL_FORMAT_RGB8, data=rgb.tobytes())
reply = inspection.Inspect(i.InspectRequest(recipe=args.recipe, frame=t.Frame(raw=raw), frame_id="raw"), timeout=10)
print(f"{reply.frame_id}: {t.Verdict.Name(reply.verdict)} score {reply.score:.4f}")
