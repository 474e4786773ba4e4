// Steers a worldsim stream from the keyboard and mouse and shows it on a RawImage: one control row per video frame
// period, keys by the names in the daemon's schema, mouse motion (while the cursor is locked) as the axes, and, when
// the model takes an engine embedding, a vector built from a transform's state.
//
// Add it to a GameObject (it adds a WorldsimStream), press Play, click the picture to lock the mouse (Esc frees
// it). F1 pauses/resumes, F2 resets the stream, F3 switches to the next prompt. Uses the Input Manager (Project
// Settings > Player > Active Input Handling: "Input Manager (Old)" or "Both").
using System;
using System.Collections.Generic;
using UnityEngine;
using UnityEngine.UI;
using Worldsim;
using Worldsim.Unity;

[RequireComponent(typeof(WorldsimStream))]
public sealed class WorldsimBasicSample : MonoBehaviour
{
    [Tooltip("Where the stream is shown; a full-screen one is made if empty")]
    public RawImage screen;
    [Tooltip("Its position, velocity and heading become the engine embedding (models with one); this object if empty")]
    public Transform player;
    [Tooltip("Axis units per Input.GetAxis(\"Mouse X\") unit (about 0.02 per pixel with Unity's default 0.1)")]
    public float mouseSensitivity = 0.2f;
    public string[] prompts =
        { "a snowy mountain village at dusk", "a desert highway at noon", "a harbour in heavy rain" };

    WorldsimStream stream;
    Welcome schema;
    KeyCode[][] keyCodes;  // per schema key, the keys that press it
    bool[] tapped;         // pressed at any time since the last row
    float dx, dy, sinceRow;
    Vector3 lastPosition;
    bool paused;
    int nextPrompt;

    void Awake()
    {
        stream = GetComponent<WorldsimStream>();
        stream.Connected += OnConnected;
        if (player == null) player = transform;
        if (screen == null) screen = MakeScreen();
        lastPosition = player.position;
    }

    void OnDestroy()
    {
        if (stream != null) stream.Connected -= OnConnected;
    }

    void OnConnected(Welcome welcome)
    {
        schema = welcome;
        keyCodes = new KeyCode[welcome.Keys.Length][];
        for (int i = 0; i < keyCodes.Length; i++)
        {
            keyCodes[i] = KeysFor(welcome.Keys[i]);
            if (keyCodes[i].Length == 0) Debug.LogWarning("worldsim sample: no key for schema key " + welcome.Keys[i]);
        }
        tapped = new bool[keyCodes.Length];
    }

    /// <summary>KeyCodes for a schema key name: "W", "Space", "Shift", "Up", "7", or any KeyCode name.</summary>
    static KeyCode[] KeysFor(string name)
    {
        switch (name.ToLowerInvariant())
        {
            case "w": return new[] { KeyCode.W, KeyCode.UpArrow };
            case "a": return new[] { KeyCode.A, KeyCode.LeftArrow };
            case "s": return new[] { KeyCode.S, KeyCode.DownArrow };
            case "d": return new[] { KeyCode.D, KeyCode.RightArrow };
            case "shift": return new[] { KeyCode.LeftShift, KeyCode.RightShift };
            case "ctrl": case "control": return new[] { KeyCode.LeftControl, KeyCode.RightControl };
            case "alt": return new[] { KeyCode.LeftAlt, KeyCode.RightAlt };
            case "up": case "down": case "left": case "right":
                return new[] { (KeyCode)Enum.Parse(typeof(KeyCode), name + "Arrow", true) };
        }
        if (name.Length == 1 && char.IsDigit(name[0])) return new[] { KeyCode.Alpha0 + (name[0] - '0') };
        try
        {
            return new[] { (KeyCode)Enum.Parse(typeof(KeyCode), name, true) };
        }
        catch (ArgumentException)
        {
            return new KeyCode[0];
        }
    }

    void Update()
    {
        if (stream.Texture != null)
        {
            screen.texture = stream.Texture;
            screen.uvRect = stream.UvRect;
        }
        if (!stream.IsStreaming || schema == null) return;

        if (Input.GetMouseButtonDown(0)) Cursor.lockState = CursorLockMode.Locked;
        if (Input.GetKeyDown(KeyCode.Escape)) Cursor.lockState = CursorLockMode.None;
        if (Input.GetKeyDown(KeyCode.F1)) TogglePause();
        if (Input.GetKeyDown(KeyCode.F2)) ResetStream();
        if (Input.GetKeyDown(KeyCode.F3) && prompts.Length > 0)
            stream.SwitchPrompt(prompts[nextPrompt++ % prompts.Length], "recache");

        // Between rows: remember taps (a key pressed and released within one row still counts) and sum the mouse.
        for (int i = 0; i < keyCodes.Length; i++) tapped[i] |= AnyHeld(keyCodes[i]);
        if (Cursor.lockState == CursorLockMode.Locked)
        {
            dx += Input.GetAxis("Mouse X");
            dy -= Input.GetAxis("Mouse Y");  // the protocol's mouse_dy grows downwards, as screen coordinates do
        }
        sinceRow += Time.unscaledDeltaTime;
        if (sinceRow < stream.FramePeriod || paused) return;
        float elapsed = sinceRow;
        sinceRow = Mathf.Min(sinceRow - stream.FramePeriod, stream.FramePeriod);
        SendRow(elapsed);
    }

    void SendRow(float elapsed)
    {
        float[][] keys = null, axes = null, embedding = null;
        if (schema.Keys.Length > 0)
        {
            var row = new float[schema.Keys.Length];
            for (int i = 0; i < row.Length; i++) row[i] = tapped[i] || AnyHeld(keyCodes[i]) ? 1 : 0;
            keys = new[] { row };
        }
        if (schema.Axes.Length > 0)
        {
            var row = new float[schema.Axes.Length];
            for (int i = 0; i < row.Length; i++)
            {
                string axis = schema.Axes[i];
                float v = axis == "mouse_dx" || axis == "mouse_x" || axis == "yaw" ? dx
                        : axis == "mouse_dy" || axis == "mouse_y" || axis == "pitch" ? dy : 0;
                row[i] = Mathf.Clamp(v * mouseSensitivity, -1, 1);
            }
            axes = new[] { row };
        }
        if (schema.EmbeddingDim > 0) embedding = new[] { Embedding(schema.EmbeddingDim, elapsed) };
        Array.Clear(tapped, 0, tapped.Length);
        dx = dy = 0;
        try
        {
            stream.Client.SendControls(stream.Session, keys, axes, embedding);
        }
        catch (ConnectionLostException)
        {
            // WorldsimStream logs why the connection ended.
        }
    }

    /// <summary>The embedding is opaque to the protocol: what it means is whatever the model was trained with. This
    /// sample sends the player's position, velocity and heading (sin, cos), zero-padded or cut to the width.</summary>
    float[] Embedding(int width, float elapsed)
    {
        Vector3 p = player.position, v = (p - lastPosition) / Mathf.Max(elapsed, 1e-3f);
        lastPosition = p;
        float yaw = player.eulerAngles.y * Mathf.Deg2Rad;
        var state = new List<float> { p.x, p.y, p.z, v.x, v.y, v.z, Mathf.Sin(yaw), Mathf.Cos(yaw) };
        var row = new float[width];
        for (int i = 0; i < width && i < state.Count; i++) row[i] = state[i];
        return row;
    }

    static bool AnyHeld(KeyCode[] codes)
    {
        foreach (KeyCode k in codes)
            if (Input.GetKey(k)) return true;
        return false;
    }

    async void TogglePause()
    {
        paused = !paused;
        try
        {
            await stream.SetPausedAsync(paused);
        }
        catch (Exception e)
        {
            Debug.LogWarning("worldsim sample: " + e.Message);
        }
    }

    async void ResetStream()  // not Reset: MonoBehaviour.Reset is the editor's "reset component" message
    {
        try
        {
            await stream.ResetAsync();
        }
        catch (Exception e)
        {
            Debug.LogWarning("worldsim sample: " + e.Message);
        }
    }

    RawImage MakeScreen()
    {
        var canvas = new GameObject("Worldsim Canvas", typeof(Canvas)).GetComponent<Canvas>();
        canvas.renderMode = RenderMode.ScreenSpaceOverlay;
        var image = new GameObject("Worldsim Screen", typeof(RawImage)).GetComponent<RawImage>();
        image.transform.SetParent(canvas.transform, false);
        RectTransform rect = image.rectTransform;
        rect.anchorMin = Vector2.zero;
        rect.anchorMax = Vector2.one;
        rect.offsetMin = rect.offsetMax = Vector2.zero;
        return image;
    }
}
