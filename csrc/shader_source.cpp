#include "shader_source.h"

#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

namespace mfa {
namespace {

std::mutex directory_mutex;
std::string shader_directory;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("mfa_torch: cannot read shader file " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void expand(const std::string& directory, const std::string& file, std::set<std::string>& seen, std::string& out) {
  if (!seen.insert(file).second) return;  // every header is include-once
  static const std::regex quoted_include(R"(^\s*#\s*include\s*"([^"]+)\"\s*$)");
  static const std::regex pragma_once(R"(^\s*#\s*pragma\s+once\s*$)");
  std::istringstream lines(read_file(directory + "/" + file));
  std::string line;
  std::smatch match;
  while (std::getline(lines, line)) {
    if (std::regex_match(line, match, quoted_include)) {
      expand(directory, match[1].str(), seen, out);
    } else if (!std::regex_match(line, pragma_once)) {
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
  expand(directory, file, seen, out);
  return out;
}

}  // namespace mfa
