import sys, time, torch, numpy as np, torch.nn.functional as F
sys.path.insert(0, "/tmp/vaex/repo")
torch.manual_seed(0); torch.set_num_threads(2); torch.set_flush_denormal(True)
from embedded import video_architecture as va, video_dataset as vd, video_evaluate as ve
from embedded.video_train import to_tensor, shape_weights
from diffusers import AutoencoderKLCogVideoX
vae = AutoencoderKLCogVideoX(**va.VAE_CONFIG); vae.load_state_dict(torch.load("/tmp/tcv2-ckpt/vae.pt", weights_only=False)["vae"])
clips, _ = vd.sample_dataset(3000, seed=1); data = to_tensor(clips); del clips
ev_clips, ev_caps = vd.sample_dataset(96, seed=321)
def check():
    vae.eval()
    with torch.no_grad():
        rec = vae.decode(vae.encode(to_tensor(ev_clips)).latent_dist.mean).sample
    fr = ((rec.clamp(-1,1)+1)*127.5).round().byte().permute(0,2,3,4,1).numpy()
    rows = [ve.judge_video(c, f) for c, f in zip(ev_caps, fr)]
    tri = [r["shape_ok"] for r, c in zip(rows, ev_caps) if "triangle" in c]
    vae.train()
    return ve.rates(rows)["shape"], float(np.mean(tri)), 10*np.log10(255**2/np.mean((fr.astype(float)-ev_clips)**2))
print("start", check(), flush=True)
opt = torch.optim.AdamW(vae.parameters(), lr=5e-4); vae.train()
rng = np.random.default_rng(5); t0 = time.time()
for step in range(1, 100000):
    idx = rng.integers(len(data), size=4); x = data[idx]
    post = vae.encode(x).latent_dist; z = post.mean + post.std * torch.randn_like(post.mean)
    rec = vae.decode(z).sample; w = shape_weights(x, 10.0); err = rec - x
    loss = ((err.abs() + err.square()) * w).sum() / (w.sum() * 3) + 1e-5 * post.kl().mean() / x[0].numel()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0); opt.step()
    if step % 300 == 0:
        print(step, f"{time.time()-t0:.0f}s loss {loss.item():.4f}", "shape/triangle/psnr", check(), flush=True)
    if time.time() - t0 > float(sys.argv[1]): break
print("end", step, check(), flush=True)
