#include "shader_source.h"

#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>

namespace mfa {
namespace {

std::mutex directory_mutex;
std::string shader_directory;

std::string read_file(const std::string& path, const std::string& included_from) {
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("mfa_torch: cannot read shader file " + path +
                             (included_from.empty() ? "" : " (included from " + included_from + ")"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Directives are parsed by hand, not with std::regex: torch's libraries export their own std::regex template
// instantiations and the dynamic linker binds some of this extension's regex symbols to them, so both builds' regex
// internals would have to agree, which another compiler version does not promise (torch 2.11 with GCC 13.3: the
// first match segfaulted).
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

std::string_view trimmed(std::string_view text) {
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

// For a line `# directive rest` (spaces allowed around '#'): the rest, untrimmed at its start; otherwise nothing.
std::optional<std::string_view> directive_argument(std::string_view line, std::string_view directive) {
  line = trimmed(line);
  if (line.empty() || line.front() != '#') return std::nullopt;
  line = trimmed(line.substr(1));
  if (line.substr(0, directive.size()) != directive) return std::nullopt;
  return line.substr(directive.size());
}

// The file of `#include "file"`; nothing for any other line, <...> includes included.
std::optional<std::string> quoted_include(std::string_view line) {
  const auto argument = directive_argument(line, "include");
  if (!argument) return std::nullopt;
  const std::string_view quoted = trimmed(*argument);
  if (quoted.size() < 3 || quoted.front() != '"' || quoted.back() != '"') return std::nullopt;
  const std::string_view file = quoted.substr(1, quoted.size() - 2);
  if (file.find('"') != std::string_view::npos) return std::nullopt;
  return std::string(file);
}

// `#pragma once`, with at least one space between the words.
bool is_pragma_once(std::string_view line) {
  const auto argument = directive_argument(line, "pragma");
  return argument && !argument->empty() && is_space(argument->front()) && trimmed(*argument) == "once";
}

void expand(const std::string& directory, const std::string& file, const std::string& included_from,
            std::set<std::string>& seen, std::string& out) {
  if (!seen.insert(file).second) return;  // every header is include-once
  std::istringstream lines(read_file(directory + "/" + file, included_from));
  std::string line;
  while (std::getline(lines, line)) {
    if (const auto header = quoted_include(line)) {
      expand(directory, *header, file, seen, out);
    } else if (!is_pragma_once(line)) {
      out += line;
      out += '\n';
    }
  }
}

}  // namespace

void set_shader_directory(const std::string& directory) {
  std::lock_guard<std::mutex> lock(directory_mutex);
  shader_directory = directory;
}

std::string expanded_shader_source(const std::string& file) {
  std::string directory;
  {
    std::lock_guard<std::mutex> lock(directory_mutex);
    directory = shader_directory;
  }
  if (directory.empty()) throw std::runtime_error("mfa_torch: the shader directory has not been set");
  std::set<std::string> seen;
  std::string out;
  expand(directory, file, "", seen, out);
  return out;
}

}  // namespace mfa
