// The studio page: three tabs (speech, image, video), one per studio module; the address's #hash picks the
// tab, so /studio#video can be linked to.

import { initApiKeyBox } from "/static/common.js";
import * as image from "/static/studio-image.js";
import * as tts from "/static/studio-tts.js";
import * as video from "/static/studio-video.js";

const STUDIOS = ["tts", "image", "video"];

function show(name) {
  const wanted = STUDIOS.includes(name) ? name : STUDIOS[0];
  for (const studio of STUDIOS) {
    document.getElementById(`tab-${studio}`).setAttribute("aria-selected", String(studio === wanted));
    document.getElementById(`studio-${studio}`).classList.toggle("hidden", studio !== wanted);
  }
}

for (const button of document.querySelectorAll("[data-studio]")) {
  button.addEventListener("click", () => {
    history.replaceState(null, "", `#${button.dataset.studio}`);
    show(button.dataset.studio);
  });
}
window.addEventListener("hashchange", () => show(location.hash.slice(1)));

initApiKeyBox(); // first: it moves a key given in the address (?api_key=) into storage for the calls below
show(location.hash.slice(1));
tts.init();
image.init();
video.init();
