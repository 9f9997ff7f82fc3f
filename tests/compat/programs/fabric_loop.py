# The converted loop of nearly every Fabric script, on one CPU process: losses and final weights printed.
import torch
from lightning.fabric import Fabric

fabric = Fabric(accelerator="cpu", devices=1)
fabric.launch()
fabric.seed_everything(42)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model, optimizer = fabric.setup(model, optimizer)
dataset = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(dataset, batch_size=8))
for _epoch in range(2):
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        print(f"@@ loss {loss.item():.8f}")
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
print("@@ weights", " ".join(f"{v:.8f}" for v in weights.tolist()))
