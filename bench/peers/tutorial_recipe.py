"""Peer contestant (a): the classic PyTorch "Transfer Learning for Computer Vision" tutorial fine-tuning recipe,
as a plain loop, on hymenoptera (train -> val), with headstart's default backbone and weights.

    .venv/bin/python bench/peers/tutorial_recipe.py [--epochs 25] [--json bench/results/peer_tutorial.json]
    .venv/bin/python bench/peers/tutorial_recipe.py --epochs 1 --limit 32      # smoke test

The recipe, as in the tutorial ("Finetuning the ConvNet"):
  - torchvision ImageFolder + DataLoader, batch_size=4, shuffle=True for both splits;
  - train: RandomResizedCrop(224) + RandomHorizontalFlip; val: Resize(256) + CenterCrop(224) (torchvision's
    default bilinear interpolation, as in the tutorial);
  - a new 2-class classifier, ALL parameters trained, CrossEntropyLoss, SGD(lr=0.001, momentum=0.9),
    StepLR(step_size=7, gamma=0.1) stepped once per epoch, 25 epochs;
  - the weights of the best val-accuracy epoch (strictly better, as the tutorial's ``>``) are kept and loaded at
    the end.
Deviations, all deliberate:
  - backbone: timm tf_efficientnet_lite0 with the EfficientNet-Lite0 ImageNet weights (headstart's default,
    obtained offline via ``headstart.models.create_backbone``) instead of torchvision's resnet18, so every
    contestant uses the same backbone and weights;
  - normalisation: the backbone's own mean = std = (0.5, 0.5, 0.5) instead of the tutorial's ImageNet mean/std,
    which these TF-trained weights were not trained with (it degrades them);
  - num_workers=2 instead of the tutorial's 4: the benchmark machine has 2 cores (``--num-workers``);
  - ``--limit N`` (N random images per split) exists for smoke tests only.
Like the tutorial, ImageFolder skips files without an image extension (train/ants/imageNotFound.gif), so the
splits are 244 train and 153 val images.

Timing: ``seconds`` in each epoch record is the wall time since the script started its work (after the imports:
model creation and data set-up are included), at the end of that epoch's val pass.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import DATA, Clock, backbone_preprocessing, create_lite0, finish, log_epoch, machine, subset_indices, summary  # noqa: I001

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

CONTESTANT = "pytorch-tutorial-recipe"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train/ and val/ (ImageFolder layout)")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only N images per split (smoke tests)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    clock = Clock()
    preprocessing = backbone_preprocessing()
    normalize = transforms.Normalize(preprocessing.mean, preprocessing.std)
    data_transforms = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]),
    }
    image_datasets = {x: datasets.ImageFolder(args.data / x, data_transforms[x]) for x in ["train", "val"]}
    class_names = image_datasets["train"].classes
    assert image_datasets["val"].classes == class_names, (class_names, image_datasets["val"].classes)
    for phase in ["train", "val"]:
        indices = subset_indices(len(image_datasets[phase]), args.limit, args.seed)
        if indices is not None:
            image_datasets[phase] = Subset(image_datasets[phase], indices)
    dataloaders = {x: DataLoader(image_datasets[x], batch_size=args.batch_size, shuffle=True,
                                 num_workers=args.num_workers) for x in ["train", "val"]}
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}

    model = create_lite0(len(class_names))  # new Linear(1280, 2) classifier, all layers trainable
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    print(f"{CONTESTANT}: {dataset_sizes['train']} train / {dataset_sizes['val']} val images, classes {class_names},"
          f" batch {args.batch_size}, {args.num_workers} workers, {torch.get_num_threads()} threads;"
          f" set-up {clock():.1f}s", flush=True)

    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc = -1.0
    history: list[dict] = []
    for epoch in range(args.epochs):
        epoch_started = time.perf_counter()
        record: dict = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in dataloaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += int(torch.sum(preds == labels.data))
            if phase == "train":
                scheduler.step()
            record[f"{phase}_loss"] = running_loss / dataset_sizes[phase]
            record[f"{phase}_accuracy"] = running_corrects / dataset_sizes[phase]
        record["epoch_seconds"] = round(time.perf_counter() - epoch_started, 2)
        record["seconds"] = round(clock(), 2)
        if record["val_accuracy"] > best_acc:
            best_acc = record["val_accuracy"]
            best_model_wts = copy.deepcopy(model.state_dict())
        history.append(record)
        log_epoch(record)

    model.load_state_dict(best_model_wts)  # the tutorial returns the best-val-accuracy model
    seconds_total = clock()
    results = summary(
        CONTESTANT, history, seconds_total,
        config={"backbone": "tf_efficientnet_lite0 (headstart efficientnet_lite0 packaged weights)",
                "normalisation": {"mean": list(preprocessing.mean), "std": list(preprocessing.std)},
                "train_transform": "RandomResizedCrop(224) + RandomHorizontalFlip (bilinear)",
                "val_transform": "Resize(256) + CenterCrop(224) (bilinear)",
                "optimizer": "SGD(lr=0.001, momentum=0.9), all parameters", "scheduler": "StepLR(step_size=7, gamma=0.1)",
                "epochs": args.epochs, "batch_size": args.batch_size, "num_workers": args.num_workers,
                "seed": args.seed, "limit": args.limit,
                "n_train": dataset_sizes["train"], "n_val": dataset_sizes["val"]},
        machine=machine(),
    )
    finish(CONTESTANT, results, seconds_total, args.json)


if __name__ == "__main__":
    main()
