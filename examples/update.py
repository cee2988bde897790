"""Changes one setting of a recipe and nothing else (a partial update with a
field mask): only the sensitivity, so the reference is not rebuilt.

    python examples/update.py --server 127.0.0.1:50051 --recipe demo --sensitivity 1.2
"""
import argparse

import grpc
from google.protobuf import field_mask_pb2
from loupe.v1 import recipes_pb2 as r, recipes_pb2_grpc
from loupe.v1 import types_pb2 as t

parser = argparse.ArgumentParser()
parser.add_argument("--server", default="127.0.0.1:50051")
parser.add_argument("--recipe", default="demo")
parser.add_argument("--sensitivity", type=float, required=True)
args = parser.parse_args()

recipes = recipes_pb2_grpc.RecipesStub(grpc.insecure_channel(args.server))
before = recipes.GetRecipe(r.GetRecipeRequest(name=args.recipe))
after = recipes.UpdateRecipe(
    r.UpdateRecipeRequest(
        name=args.recipe,
        settings=t.RecipeSettings(sensitivity=args.sensitivity),
        update_mask=field_mask_pb2.FieldMask(paths=["sensitivity"]),
    )
)
print(f"recipe {after.name} revision {before.revision} -> {after.revision}: sensitivity "
      f"{before.settings.sensitivity:.3g} -> {after.settings.sensitivity:.3g}, threshold {before.threshold:.4f} -> "
      f"{after.threshold:.4f}, match mode {t.MatchMode.Name(after.settings.match_mode)}, "
      f"reference rebuilt: {after.reference_rebuilt}")
